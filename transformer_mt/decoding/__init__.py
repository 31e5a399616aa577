"""Beam search, greedy decoding and sampling, the translator, and scoring with sacreBLEU."""
