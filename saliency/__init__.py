"""Class-agnostic saliency: PiCANet (TRAIN_SALIENCY, CREATE_SALIENCY)."""
