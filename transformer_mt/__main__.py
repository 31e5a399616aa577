"""`python -m transformer_mt ...`, so that `torchrun -m transformer_mt train ...` launches DDP."""

from transformer_mt.cli import main

if __name__ == "__main__":
    main()
