# The course's commands. Every target creates the environment first if it is missing.
#   make lab      serve JupyterLab on 127.0.0.1 with course/ as its root
#   make test     run the whole test suite (fast mode)
#   make release  regenerate course/ from solutions/ with nbgrader
#   make grade    autograde autograder/submitted/ (JOBS at once), write feedback, export grades.csv
#   make doctor   check versions, the device, and that every offline data set loads
#   make bench    run every chapter in fast and full mode and write tests/bench/REPORT.md
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
# nbgrader runs alembic and the kernel by name: the environment must be first on PATH.
export PATH := $(BIN):$(PATH)
# The one torch pin lives in pyproject.toml; install it before anything that needs torch,
# so no dependency pulls a multi-GB CUDA build.
TORCH  := $(shell grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
STAMP  := $(VENV)/.installed
PORT   ?= 8888
LAB_ARGS ?=
# Jupyter refuses to run as root (containers, CI) unless told it is on purpose.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help install lab test release grade doctor bench clean

help:
	@sed -n '1,8p' Makefile | sed 's/^# \{0,1\}//'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "Installing $(TORCH) (CPU build), then the course and its tools into $(VENV) ..."
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	@touch $@

install: $(STAMP)

lab: $(STAMP)
	@echo "Starting JupyterLab on 127.0.0.1; open the URL with the token printed below."
	jupyter lab --no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port=$(PORT) \
	  --ServerApp.root_dir="$(CURDIR)/course" $(ALLOW_ROOT) $(LAB_ARGS)

test: $(STAMP)
	COURSE_FAST=1 python -m pytest $(PYTEST_ARGS)

release: $(STAMP)
	cd autograder && for dir in ../solutions/*/; do \
	  nbgrader generate_assignment "$$(basename "$$dir")" --force --log-level=WARN; done

JOBS ?= $(shell nproc)
grade: $(STAMP)
	python autograder/grade.py --jobs $(JOBS) $(GRADE_ARGS)

doctor: $(STAMP)
	python -m companion doctor

bench: $(STAMP)
	python tests/bench/run.py $(BENCH_ARGS)

clean:
	rm -rf autograder/autograded autograder/feedback autograder/gradebook.db autograder/grades.csv autograder/.grading
