"""The built-in prompts, as data: text openings for R and for training contexts, and chat requests.

Each family comes in disjoint sets, so that the prompts R is measured on never enter training
(generate.py samples after them, chat.py formats the requests in a model's chat template).
"""

# Varied openings so that R is not a property of one context.
# The course experiments' prompts (their README numbers were measured on these 8).
COURSE_PROMPTS = (
    "The king said",
    "Once upon a time,",
    "In the morning, the",
    "My favourite food is",
    "The scientist explained that",
    "She opened the letter and",
    "The city at night",
    "When I was young,",
)

# R prompts: varied openings (narrative, dialogue, instructions, technical, lists, questions).
DEFAULT_PROMPTS = COURSE_PROMPTS + (
    '"Where have you been?" she asked.',
    "To install the package, first",
    "The function returns a list of",
    "Here are three things to pack for a trip:",
    "Why do cats sleep so much?",
    "Dear Sir or Madam,",
    "The results of the experiment show",
    "Step 1: Preheat the oven to",
)

# Prompts for on-policy training contexts (tilt-distill): disjoint from DEFAULT_PROMPTS, so that
# the prompts R is measured on never enter training.
TRAIN_PROMPTS = (
    "It was a cold winter evening and",
    "The old man looked at the sea",
    "\"I don't think that's a good idea,\" he said.",
    '"Can you help me?" asked the girl.',
    "First, open the settings menu and",
    "To make a cup of tea, you need",
    "The algorithm works by",
    "In this tutorial we will learn how to",
    "The main causes of the war were",
    "A list of the best books of the year:",
    "What is the capital of France?",
    "How does a computer store numbers?",
    "The weather today is",
    "My name is Anna and I",
    "The company announced on Monday that",
    "According to the report,",
    "The doctor told me that",
    "Yesterday I went to the market and",
    "The best way to learn a language is",
    "Ingredients: two eggs,",
    "The history of the city begins",
    "In the year 1850,",
    "The teacher asked the students to",
    "Our team has been working on",
    "The river flows through",
    "He picked up the phone and",
    "The key idea of the paper is",
    "Q: What time does the train leave?",
    "Chapter One. The house on the hill",
    "Please note that the office will",
    "The children ran into the garden",
    "If you want to save money,",
)

# R in chat: questions, instructions, advice, explanations and a little creative writing.
CHAT_PROMPTS = (
    "What is the tallest mountain in Africa?",
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about the sea.",
    "Give me three tips for sleeping better.",
    "How do I boil an egg?",
    "What are the main differences between a frog and a toad?",
    "Summarize the story of Cinderella in one paragraph.",
    "Can you suggest a name for my new puppy?",
    "What should I pack for a weekend of camping?",
    "Translate 'good morning' into French and Spanish.",
    "Why do leaves change colour in autumn?",
    "Write a friendly email inviting my neighbours to a barbecue.",
    "What is photosynthesis?",
    "List four healthy breakfast ideas.",
    "How can I stay focused while studying?",
    "Tell me a fun fact about octopuses.",
    "What is the difference between weather and climate?",
    "Describe a sunset over a city.",
    "How do vaccines work?",
    "Give me a simple recipe for tomato soup.",
    "What are some good ways to save money each month?",
    "Write the opening line of a mystery novel.",
    "Why is exercise good for the heart?",
    "How many planets are in the solar system, and which is the largest?",
    "What is a haiku? Write one about rain.",
    "Explain what a computer program is to a child.",
    "What are the benefits of reading books?",
    "How do I make a paper aeroplane?",
    "Tell me a short story about a brave mouse.",
    "What causes earthquakes?",
    "Suggest three hobbies I could start this year.",
    "What is the water cycle?",
)

# Training contexts in chat (head-rows policy replies, model-placement exchanges): disjoint from the above.
CHAT_TRAIN_PROMPTS = (
    "What is the capital of Australia?",
    "Write a limerick about a cat.",
    "How do I change a flat tyre?",
    "Give me five words that rhyme with light.",
    "Why do we have seasons?",
    "Describe your ideal holiday.",
    "How does a rainbow form?",
    "What is a good way to learn to play the guitar?",
    "Write a thank-you note to a teacher.",
    "What are clouds made of?",
    "Explain how a bicycle works.",
    "What can I cook with rice and beans?",
    "Tell me about the history of the Olympic Games.",
    "How do bees make honey?",
    "Write a short dialogue between a robot and a child.",
    "What is gravity?",
    "Give me advice for a job interview.",
    "Why is the ocean salty?",
    "What are three things that make a good friend?",
    "Describe a forest in winter.",
    "How do I start a vegetable garden?",
    "What does a doctor do?",
    "Write a riddle and give its answer.",
    "How do birds know where to migrate?",
    "What is the difference between a virus and a bacterium?",
    "Plan a simple birthday party for a ten-year-old.",
    "Why do cats purr?",
    "Explain what electricity is.",
    "What are some tips for public speaking?",
    "Write a two-line motto for a bakery.",
    "How is paper made?",
    "What would you take to a desert island?",
)

# Held-out exchanges for perplexity and drift: the reference's replies to these, sampled once per run.
CHAT_HELD_OUT_PROMPTS = (
    "What is the largest animal on Earth?",
    "Write a short song about friendship.",
    "How do I clean a cast-iron pan?",
    "Why do stars twinkle?",
    "Give me a plan for a productive morning.",
    "What is the purpose of the moon's phases?",
    "Describe a busy market.",
    "How do plants drink water?",
    "Write a postcard from a trip to the mountains.",
    "What is democracy?",
    "How do I tie a tie?",
    "Tell me something interesting about volcanoes.",
    "What makes a good story?",
    "How do fish breathe underwater?",
    "Write a short note to cheer up a friend.",
    "What is recycling and why does it matter?",
)
