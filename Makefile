# speedattn developer entry points. Every target is idempotent and cheap when nothing changed.
#
#   make venv    .venv with the Python toolchain (+ apt packages: GoogleTest, clang-14) if missing
#   make build   editable install of the Python package + C++ library and tests in build/cpp
#   make test    build, then every test suite (ctest, pytest, ...)
#   make demo    run the demo (speedattn.cli demo)
#   make clean   remove build outputs (keeps .venv);  make distclean also removes .venv

SHELL := /bin/bash
.DEFAULT_GOAL := build

VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
CMAKE       := $(VENV)/bin/cmake
CTEST       := $(VENV)/bin/ctest
BUILD_DIR   ?= build/cpp
BUILD_TYPE  ?= Release
JOBS        ?= $(shell nproc 2>/dev/null || echo 2)
STAMPS      := build/.stamps

# The venv's cmake and ninja come first (scikit-build-core and CMake look them up on PATH).
export PATH := $(abspath $(VENV))/bin:$(PATH)
export CMAKE_BUILD_PARALLEL_LEVEL := $(JOBS)

PY_DEPS  := torch==2.13.0 numpy ml_dtypes nanobind scikit-build-core pytest hypothesis matplotlib ninja cmake
APT_DEPS := libgtest-dev clang-14 libclang-rt-14-dev
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Anything that changes the compiled library or extension. New files are picked up because a
# new file is newer than the stamp; CMake's CONFIGURE_DEPENDS globs do the rest.
NATIVE_SOURCES := $(shell find src include python/speedattn -type f \
                    \( -name '*.cpp' -o -name '*.h' -o -name '*.hpp' -o -name '*.inc' \) 2>/dev/null)
BUILD_FILES    := CMakeLists.txt pyproject.toml $(wildcard cmake/*)

.PHONY: venv system-deps build python-build cpp-build test cpp-test python-test demo clean distclean

# ---------------------------------------------------------------------------------------------
venv: $(VENV)/.stamp-venv

$(VENV)/.stamp-venv: Makefile
	@$(MAKE) --no-print-directory system-deps
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PIP) install $(PY_DEPS)
	@touch $@

# apt packages, installed only when missing (and only where apt-get exists).
system-deps:
	@need=""; \
	[ -f /usr/include/gtest/gtest.h ] \
	  || need="$$need libgtest-dev"; \
	command -v clang++-14 >/dev/null 2>&1 || need="$$need clang-14"; \
	ls /usr/lib/llvm-14/lib/clang/*/lib/linux/libclang_rt.asan-x86_64.a >/dev/null 2>&1 || need="$$need libclang-rt-14-dev"; \
	if [ -n "$$need" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    echo "installing:$$need"; \
	    $(SUDO) apt-get update && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$need; \
	  else \
	    echo "warning: no apt-get; install these yourself:$$need" >&2; \
	  fi; \
	fi

# ---------------------------------------------------------------------------------------------
build: python-build cpp-build

# Editable install (scikit-build-core, persistent build dir build/<wheel tag>).
python-build: $(STAMPS)/python-dev

$(STAMPS)/python-dev: $(VENV)/.stamp-venv $(NATIVE_SOURCES) $(BUILD_FILES)
	$(PIP) install --no-build-isolation -e .
	@mkdir -p $(STAMPS) && touch $@

# C++ library + GoogleTest suites. Ninja makes the no-change case a no-op.
cpp-build: $(VENV)/.stamp-venv
	@[ -f $(BUILD_DIR)/CMakeCache.txt ] || $(CMAKE) -S . -B $(BUILD_DIR) -G Ninja \
	  -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DSPEEDATTN_BUILD_TESTS=ON
	$(CMAKE) --build $(BUILD_DIR) -j $(JOBS)

# ---------------------------------------------------------------------------------------------
# Test steps run in this order; add new suites as prerequisites-in-recipe below.
test: build
	$(MAKE) --no-print-directory cpp-test
	$(MAKE) --no-print-directory python-test
	CMAKE=$(CMAKE) BUILD_DIR=$(BUILD_DIR) JOBS=$(JOBS) bash tests/examples/run_cpp_example.sh
	JOBS=$(JOBS) bash tests/sanitize/run.sh
	JOBS=$(JOBS) bash fuzz/ci.sh

cpp-test: cpp-build
	$(CTEST) --test-dir $(BUILD_DIR) --output-on-failure -j $(JOBS)

python-test: python-build
	@if ls tests/python/test_*.py >/dev/null 2>&1; then \
	  $(PY) -m pytest tests/python -q || { rc=$$?; [ $$rc -eq 5 ] || exit $$rc; }; \
	else \
	  echo "no Python tests yet (tests/python/test_*.py)"; \
	fi

demo: build
	$(PY) -m speedattn.cli demo

# ---------------------------------------------------------------------------------------------
clean:
	rm -rf build dist *.egg-info python/*.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
