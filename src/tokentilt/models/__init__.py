"""Models: loading (load.py: bundled, a folder, the hub), LoRA (lora.py), devices (device.py), random
models of real sizes (simulated.py), and the lean decoding step (fast/)."""
