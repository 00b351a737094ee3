"""What several stages share: the tmp/ layout and its file formats, atomic writes, metrics,
device and seeding, checkpoints and tensorboard helpers."""
