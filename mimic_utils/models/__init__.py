"""The models under study: the adapter that loads and asks a VLM (vlm), attention masking, the vision-feature
cache, and the tiny and real-size builders. Imports data; nothing here reads predictions or results."""
