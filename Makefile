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

.PHONY: install demo test lint clean gpu-wheels

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

# Wheels of what a GPU image without network lacks (hydra-core, omegaconf, antlr4-python3-runtime), at
# the versions this venv tests with, into .whl/ (git-ignored): scripts/gpu_check.sh installs them with
# pip --no-index. They are pure Python; GPU_PYTHON is the image's Python for pip's tag check.
GPU_PYTHON ?= 3.12

gpu-wheels: install
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip freeze --all | grep -iE '^(hydra-core|omegaconf|antlr4-python3-runtime|setuptools)==' >.whl/pins.txt
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
		--implementation cp --platform manylinux2014_x86_64 --platform any -d .whl \
		$$(grep -iE '^(hydra-core|omegaconf)==' .whl/pins.txt)
	# setuptools to build the project with (an image's own may be too old to build wheels without `wheel`)
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: -d .whl/build $$(grep '^setuptools' .whl/pins.txt)
	# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) is published as an sdist only: build its wheel
	$(BIN)/python -m pip wheel --quiet --no-deps -w .whl $$(grep '^antlr4' .whl/pins.txt)
	rm .whl/pins.txt
	ls -lR .whl

clean:
	rm -rf $(VENV) runs
