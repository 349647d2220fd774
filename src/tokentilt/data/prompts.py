"""The built-in prompts, as data: text openings for R and for training contexts, and chat requests.

Each family comes in disjoint sets, so that the prompts R is measured on never enter training
(generate.py samples after them, chat.py formats the requests in a model's chat template).
"""

from typing import NamedTuple

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

# Creative requests (`--requests creative`): stories, descriptions, letters and poems, the kind of request
# where an instruct model's over-used words and phrases ("slop") show. Four disjoint sets, as above: R is
# measured on CREATIVE_PROMPTS, training contexts come from CREATIVE_TRAIN_PROMPTS, held-out perplexity and
# drift from CREATIVE_HELD_OUT_PROMPTS, and `tokentilt profile` finds a model's slop on CREATIVE_PROFILE_PROMPTS.
CREATIVE_PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Describe an old library at midnight.",
    "Write a letter from a soldier to his mother.",
    "Write a poem about the first snow of winter.",
    "Tell me a story about a girl who can talk to birds.",
    "Describe a thunderstorm over the ocean.",
    "Write a diary entry of a child on the first day at a new school.",
    "Write a poem about an abandoned train station.",
    "Tell a bedtime story about a sleepy dragon.",
    "Describe the smell and sounds of a bakery in the early morning.",
    "Write a love letter from a sailor far from home.",
    "Write a short story about two rivals who must work together.",
    "Describe a mountain village in spring.",
    "Write a poem about a grandmother's kitchen.",
    "Tell me a story about a robot who wants to paint.",
    "Write a speech for the opening of a new park.",
    "Describe a crowded train at rush hour.",
    "Write a fairy tale about a clockmaker and a princess.",
    "Write a short story set on a spaceship running out of fuel.",
    "Write a poem about autumn leaves.",
    "Describe a desert at dawn.",
    "Write a letter to your future self.",
    "Tell a story about a detective who is afraid of the dark.",
    "Write the opening scene of a fantasy novel.",
    "Describe a fox hunting in the snow.",
    "Write a short story about a musician who loses her voice.",
    "Write a poem about a city waking up.",
    "Tell me a story about an old man and his dog.",
    "Describe a festival in a small town.",
    "Write a farewell letter from a teacher to her class.",
    "Write a short story about a lost key.",
    "Describe a garden after the rain.",
)

CREATIVE_TRAIN_PROMPTS = (
    "Write a short story about a baker who discovers a secret recipe.",
    "Describe a castle on a hill at sunset.",
    "Write a letter from a grandfather to his grandson.",
    "Write a poem about the moon over a lake.",
    "Tell me a story about a cat who becomes king.",
    "Describe a busy harbour in the morning.",
    "Write a diary entry of an explorer in the jungle.",
    "Write a poem about a lonely lighthouse.",
    "Tell a bedtime story about a brave little star.",
    "Describe a candle-lit dinner in an old house.",
    "Write a letter of apology to a neighbour.",
    "Write a short story about a girl who finds a hidden door.",
    "Describe a field of sunflowers in summer.",
    "Write a poem about a childhood friend.",
    "Tell me a story about a knight who is afraid of horses.",
    "Write a toast for a wedding.",
    "Describe a snowy forest at night.",
    "Write a fable about a tortoise and an eagle.",
    "Write a short story about a time traveller stuck in the past.",
    "Write a poem about the sound of rain on a roof.",
    "Describe an underwater coral reef.",
    "Write a letter from a pen pal in another country.",
    "Tell a story about a thief with a kind heart.",
    "Write the opening scene of a mystery set in Venice.",
    "Describe an owl in a moonlit barn.",
    "Write a short story about a painter who can only paint the sea.",
    "Write a poem about a market at dawn.",
    "Tell me a story about two sisters and a magic mirror.",
    "Describe a county fair.",
    "Write a thank-you letter to a nurse.",
    "Write a short story about a broken compass.",
    "Describe a meadow at midday.",
)

CREATIVE_HELD_OUT_PROMPTS = (
    "Write a short story about a fisherman and a storm.",
    "Describe an attic full of old things.",
    "Write a letter from a queen to her people.",
    "Write a poem about a river in winter.",
    "Tell me a story about a boy who builds a kite.",
    "Describe a carnival at night.",
    "Write a diary entry of a sailor on a long voyage.",
    "Write a poem about an old oak tree.",
    "Tell a bedtime story about a curious rabbit.",
    "Describe a quiet café on a rainy afternoon.",
    "Write a letter to a friend who moved away.",
    "Write a short story about a map that changes.",
    "Describe a wheat field before harvest.",
    "Write a poem about a grandfather's watch.",
    "Tell me a story about a giant who likes flowers.",
    "Describe a ship leaving port.",
)

# Profiling requests: forms x subjects, disjoint from every set above (tests check it).
PROFILE_FORMS = (
    "Write a short story about {}.",
    "Describe {}.",
    "Write a poem about {}.",
    "Write a letter about {}.",
    "Tell me a story about {}.",
    "Write a diary entry about {}.",
)
PROFILE_SUBJECTS = (
    "a forgotten island",
    "a clock tower",
    "a young witch",
    "a family farm",
    "a wolf in the mountains",
    "a city in the future",
    "a storm at sea",
    "an old bookshop",
    "a wedding in the village",
    "a traveller's first night in a new city",
    "a secret garden",
    "a lost puppy",
    "a winter morning",
    "a haunted house",
    "a friendship between a mouse and an elephant",
    "the last day of summer",
)
CREATIVE_PROFILE_PROMPTS = tuple(form.format(s) for s in PROFILE_SUBJECTS for form in PROFILE_FORMS)


class RequestSet(NamedTuple):
    """One family of chat requests: R is measured on `measure`, training contexts come from `train`, held-out
    perplexity and drift from `held_out` (pairwise disjoint)."""

    measure: tuple[str, ...]
    train: tuple[str, ...]
    held_out: tuple[str, ...]


# --requests: general (questions, advice, a little creative writing) or creative (where slop shows)
CHAT_REQUESTS = {
    "general": RequestSet(CHAT_PROMPTS, CHAT_TRAIN_PROMPTS, CHAT_HELD_OUT_PROMPTS),
    "creative": RequestSet(CREATIVE_PROMPTS, CREATIVE_TRAIN_PROMPTS, CREATIVE_HELD_OUT_PROMPTS),
}
