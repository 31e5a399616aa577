# Two commands for a fresh machine with only Python:
#   make demo   train the tiny Transformer on the embedded sample, evaluate it, translate a few sentences
#   make test   run the test suite
# Each creates .venv and installs the package into it first. TORCH picks the PyTorch build
# (e.g. TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" for a CPU-only one).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
RUN ?= runs/sample
CKPT := $(RUN)/checkpoints/checkpoint_best.pt

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,moses,serve,export]"
	touch $@

demo: install
	$(BIN)/transformer-mt train output_dir=$(RUN)
	$(BIN)/transformer-mt evaluate checkpoint=$(CKPT)
	printf '%s\n' "The old woman sees the small dog." "Today the teacher reads a book." \
		| $(BIN)/transformer-mt translate checkpoint=$(CKPT)

test: install
	$(BIN)/ruff check transformer_mt tests
	$(BIN)/python -m pytest -n 2 --durations=15

clean:
	rm -rf $(VENV) runs
