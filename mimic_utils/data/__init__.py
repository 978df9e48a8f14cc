"""The data the study asks about (notebook 01): the embedded scene world, its COCO / OpenImages files and
annotation readers, the MIMIC task generators and benchmark storage, the official prompt, training conversations."""
