"""DeepLabV3 on pseudo labels (TRAIN_DEEPLAB) and its evaluation (EVAL_DEEPLAB)."""
