# Two commands for a fresh machine (Debian/Ubuntu, root or sudo):
#   make demo   installs everything, then trains and evaluates CADEL on Fashion-MNIST-LT on the CPU (minutes)
#   make test   installs everything (with the dev extra), then runs the test suite
# Installs use the exact versions the suite passed with (constraints.txt) and are remembered in .make/, redone only
# when setup.cfg, pyproject.toml, constraints.txt or .ci/install.sh change.
#   make test-latest          the suite on the newest releases, in a throw-away venv (.venv-latest)
#   make update-constraints   move constraints.txt to the newest releases (then run make test)
PYTHON ?= python3
ACCELERATE ?= accelerate launch --config_file accelerate_configs/cpu.yaml
RUN_DIR ?= runs/fashion_mnist_lt
INSTALL_INPUTS := setup.cfg pyproject.toml constraints.txt .ci/install.sh

.PHONY: install install-dev demo test test-latest update-constraints lint mutation

install: .make/install
install-dev: .make/install-dev

.make/install: $(INSTALL_INPUTS)
	bash .ci/install.sh
	@mkdir -p .make && touch $@

.make/install-dev: $(INSTALL_INPUTS)
	bash .ci/install.sh dev
	@mkdir -p .make && touch $@ .make/install

demo: install
	$(ACCELERATE) train_stage1.py --config fashion_mnist_lt --output_dir $(RUN_DIR) --overwrite_output_dir
	$(ACCELERATE) train_stage2.py --stage1_dir $(RUN_DIR)
	$(ACCELERATE) evaluate.py --eval_model $(RUN_DIR)

test: install-dev
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -n 2 -q

test-latest:
	bash .ci/latest.sh test

update-constraints:
	bash .ci/latest.sh freeze

lint: install-dev
	$(PYTHON) -m ruff check .

mutation: install-dev
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PYTHON) -m mutmut run --max-children 2 || true  # survivors make mutmut exit non-zero; the table says
	$(PYTHON) tools/mutation_scores.py
