# A thin wrapper over CMake. `make test` and `make demo` install what is missing first.
BUILD     ?= build
JOBS      ?= $(shell nproc)
WERROR    ?= $(if $(CI),ON,OFF)
CMAKE_ARGS = -DHBWATCH_WERROR=$(WERROR)

.PHONY: all build deps test test-as-users demo bench sanitize asan tsan clang install clean deb

all: build

deps:
	@scripts/install-deps.sh

$(BUILD)/CMakeCache.txt: | deps
	cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)

build: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The suite again as `nobody` and as a fresh user with a private group (run as root): each
# entry passes or says "SKIPPED: needs root (...)".
test-as-users: build
	scripts/test-as-users.sh $(BUILD)

# The Debian packages hbwatch, libhbwatch1 and libhbwatch-dev, into this directory (the
# operator's path: make deb && apt install ./hbwatch_*.deb).
deb:
	@scripts/install-deps.sh deb
	scripts/make-deb.sh

# Only what the demo runs: the tools and demo_service, not the tests and benchmarks.
demo: deps $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS) --target demo_programs
	demo/run-demo.sh $(BUILD)/bin

# The peers bench_peers measures procctl against (runit, s6, supervisor) come from Debian too.
bench: build
	@scripts/install-deps.sh --bench || echo "make bench: the peers could not be installed: bench_peers skips them" >&2
	$(BUILD)/bin/bench_heartbeat --benchmark_repetitions=10 --benchmark_report_aggregates_only=true
	$(BUILD)/bin/bench_checkproc
	$(BUILD)/bin/bench_procctl
	$(BUILD)/bin/bench_stack
	$(BUILD)/bin/bench_events
	$(BUILD)/bin/bench_http
	$(BUILD)/bin/bench_notify
	$(BUILD)/bin/bench_peers
	$(BUILD)/bin/bench_verdicts

# ASan+UBSan over every test, then TSan over the concurrency, event and HTTP tests (threads); both with clang, so that CI
# also builds the whole tree warning-free with the second compiler.
sanitize: asan tsan

asan: deps
	cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
	  -DHBWATCH_SANITIZE=address,undefined $(CMAKE_ARGS)
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ctest --output-on-failure -j $(JOBS)

tsan: deps
	cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_C_COMPILER=clang \
	  -DHBWATCH_SANITIZE=thread $(CMAKE_ARGS)
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && ctest --output-on-failure -j $(JOBS) -L 'concurrency|events|http'

install: build
	cmake --install $(BUILD) --prefix $(or $(PREFIX),/usr/local)

clean:
	rm -rf $(BUILD) build-asan build-tsan
