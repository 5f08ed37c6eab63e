"""Tokenizer and tiny model, tokenization, supervised fine-tuning, and memory planning."""
