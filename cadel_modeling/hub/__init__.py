"""The Hugging Face Hub: model cards, uploads, and a timm export of the backbone."""
