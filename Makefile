# Two commands for a fresh machine (Debian/Ubuntu, root or sudo-less container):
#   make demo   installs everything, then trains and evaluates CADEL on Fashion-MNIST-LT on the CPU (minutes)
#   make test   installs everything (with the dev extra), then runs the test suite
PYTHON ?= python3
ACCELERATE ?= accelerate launch --config_file accelerate_configs/cpu.yaml
RUN_DIR ?= runs/fashion_mnist_lt

.PHONY: install install-dev demo test

install:
	bash .ci/install.sh

install-dev:
	bash .ci/install.sh dev

demo: install
	$(ACCELERATE) train_stage1.py --config fashion_mnist_lt --output_dir $(RUN_DIR) --overwrite_output_dir true
	$(ACCELERATE) train_stage2.py --stage1_dir $(RUN_DIR)
	$(ACCELERATE) evaluate.py --eval_model $(RUN_DIR)

test: install-dev
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -n 2 -q
