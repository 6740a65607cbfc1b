"""Fine-tuning: the train split, the LoRA trainer and where it runs (local process or SkyPilot)."""
