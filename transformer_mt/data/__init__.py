"""Corpus reading and cleaning, sentencepiece, binarized datasets and batching."""
