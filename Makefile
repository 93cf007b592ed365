# Two commands for a newcomer: `make demo` (the main job on the built-in data) and `make test`.
# Both create .venv on first use: the pinned CPU torch first (an unpinned torch pulls a multi-GB CUDA build),
# then the project. With your own torch already in an environment, `pip install -e .` accepts it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast test-package test-reference dist docs lint mutate benchmark speed claims claims-quick clean

$(BIN)/uniemo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

demo: $(BIN)/uniemo
	$(BIN)/uniemo demo

# The packaging test (marked package) builds and installs the wheel; it has its own target, test-package.
test: $(BIN)/uniemo
	$(BIN)/python -m pytest -q -m "not package"

test-fast: $(BIN)/uniemo
	$(BIN)/python -m pytest -q -m "not slow and not package"

# The wheel and the sdist built, the wheel installed into a fresh venv outside the tree, `uniemo demo --fast` run there.
test-package: $(BIN)/uniemo
	$(BIN)/python -m pytest -q -m package

# dist/: the sdist, and the wheel built from it. --no-isolation builds with the venv's setuptools (the test extra),
# so nothing is downloaded.
dist: $(BIN)/uniemo
	$(BIN)/python -m build --no-isolation --outdir dist

# The documentation (docs/, mkdocs.yml) into site/; any warning fails the build.
docs: $(BIN)/uniemo
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Reference tests compare our metrics with the original packages (lpips, torch-fidelity), which need torchvision.
# The one torch/torchvision pair that imports here is torch 2.14.1 + torchvision 0.29.1 (5.5 GB), so they get their
# own venv.
REF_VENV := .venv-ref
REF_TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1

$(REF_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(REF_VENV)
	$(REF_VENV)/bin/pip install --quiet --upgrade pip
	$(REF_VENV)/bin/pip install --quiet $(REF_TORCH_PIN)
	$(REF_VENV)/bin/pip install --quiet -e ".[test]" lpips torch-fidelity
	@touch $@

test-reference: $(REF_VENV)/.installed
	$(REF_VENV)/bin/python -m pytest -q -m reference

lint: $(BIN)/uniemo
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Mutation testing of the mechanism functions (tests/mutate.py; docs/development.md): about 16–50 minutes on 2 CPU
# cores, not part of `make test`. The survivors are listed in mutants/report.md; `mutmut show NAME` prints one.
mutate: $(BIN)/uniemo
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/pip install --quiet -e ".[mutate]"
	$(BIN)/python tests/mutate.py

benchmark: $(BIN)/uniemo
	$(BIN)/python benchmarks/understanding_query_modes.py

# What uniemo adds on top of CLIP and Stable Diffusion, each against its baseline (docs/speed.md); about 30
# minutes on 2 CPU cores. On a GPU machine: bash benchmarks/gpu_check.sh
speed: $(BIN)/uniemo
	$(BIN)/python benchmarks/understanding_throughput.py
	$(BIN)/python benchmarks/generation_speed.py
	$(BIN)/python benchmarks/joint_step.py --sizes demo sd15-vitb32-256 sd15-vitb32-512 --reps 3
	$(BIN)/python benchmarks/classify_folder.py
	$(BIN)/python benchmarks/classify_folder.py --arch clip-vit-base-patch32-arch --workers 0 1

# Every claim of the paper against its control (docs/claims.md): the full profile writes results/claims.jsonl, a
# (claim, seed) at a time, and resumes where it stopped; claims-quick is one seed, a smoke run.
claims: $(BIN)/uniemo
	$(BIN)/python benchmarks/paper_claims.py

claims-quick: $(BIN)/uniemo
	$(BIN)/python benchmarks/paper_claims.py --quick

clean:
	rm -rf $(VENV) demo-output .pytest_cache mutants dist site
