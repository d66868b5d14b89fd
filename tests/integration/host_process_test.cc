// Linking libsparsekv changes nothing in the host process (issue 10, item 6). Debian's libfabric
// pulls in PSM/PSM2, whose constructors install a SIGSEGV handler that turns a crash into exit 1
// and writes *.btr files into the working directory; libsparsekv loads libfabric and rdma-core
// only when a fabric or verbs transport is chosen, and keeps the host's signal dispositions.
#include <catch2/catch.hpp>

#include <filesystem>

#include "tests/support/daemon_fixture.h"

using namespace sparsekv::testing;

namespace {

bool Has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Sanitizer builds: the sanitizer runtime would install its own handlers; the test is about ours.
const char* kNoSanitizerHandlers =
    "ASAN_OPTIONS=handle_segv=0:handle_sigbus=0:handle_abort=0:handle_sigill=0:handle_sigfpe=0:detect_leaks=0 ";

size_t Entries(const std::string& dir) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++n;
  return n;
}

}  // namespace

TEST_CASE("a program linked with libsparsekv has no foreign signal handler, and its faulting child dies by SIGSEGV", "[host][signals]") {
  DaemonFixture daemon;
  TempDir cwd;
  auto run = RunCommand("cd " + cwd.path() + " && " + kNoSanitizerHandlers + SPARSEKV_HOST_PROBE + " " +
                        daemon.address());
  INFO(run.out << run.err);
  REQUIRE(run.exit_code == 0);
  REQUIRE(Has(run.out, "ok: no signal handlers at the start of main"));
  REQUIRE(Has(run.out, "ok: shm:"));
  REQUIRE(Has(run.out, "ok: tcp:"));
  REQUIRE((Has(run.out, "ok: fabric:") || Has(run.out, "SKIPPED: fabric")));
  REQUIRE(Has(run.out, "ok: a faulting child dies by SIGSEGV"));
  REQUIRE(Entries(cwd.path()) == 0);  // no *.btr or anything else in the working directory
}

TEST_CASE("a host that installed its own SIGSEGV handler keeps it after loading libsparsekv with dlopen", "[host][signals]") {
  DaemonFixture daemon;
  TempDir cwd;
  auto run = RunCommand("cd " + cwd.path() + " && " + kNoSanitizerHandlers + SPARSEKV_DL_HOST + " " +
                        daemon.address() + " " + SPARSEKV_PROBE_EXT);
  INFO(run.out << run.err);
  REQUIRE(run.exit_code == 0);
  REQUIRE(Has(run.out, "ok: shm:"));
  REQUIRE(Has(run.out, "ok: tcp:"));
  REQUIRE((Has(run.out, "ok: fabric:") || Has(run.out, "SKIPPED: fabric")));
  REQUIRE(Has(run.out, "ok: the host's own handlers survived"));
  REQUIRE(Entries(cwd.path()) == 0);
}
