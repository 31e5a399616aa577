"""Scripts that run inside the peers' virtual environments (see `transformer_mt.bench.peers`).

They import only torch, the standard library and the peer itself, never transformer_mt: each is run
as `python SCRIPT.py '<json args>'` and prints one JSON object as its last line.
"""
