"""Training (notebooks 04 and 05, and the organism's stages): one finetuning loop for data-centric and
masked-attention LoRA runs."""
