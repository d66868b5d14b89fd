// A program linked with libsparsekv, as a decode server is: linking the library must change
// nothing in the process. Checks: no handler for SIGSEGV (or SIGBUS, SIGILL, SIGFPE, SIGABRT) at
// the start of main; none after fetches over shm, tcp and (where a provider loads) fabric; and a
// child that faults dies by SIGSEGV, as it would without the library. The caller runs it in an
// empty directory and checks that nothing was written there.
//   host_probe SERVER
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <string>

extern "C" int sparsekv_probe(const char* server, const char* transport, char* message, size_t message_bytes);

namespace {

const int kSignals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT};

std::string Handlers() {
  std::string out;
  for (int sig : kSignals) {
    struct sigaction sa {};
    sigaction(sig, nullptr, &sa);
    const bool custom = (sa.sa_flags & SA_SIGINFO) ? sa.sa_sigaction != nullptr : sa.sa_handler != SIG_DFL;
    if (custom) out += std::string(out.empty() ? "" : ", ") + strsignal(sig);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string at_start = Handlers();  // before anything of ours ran
  if (argc < 2) {
    std::fprintf(stderr, "usage: host_probe SERVER\n");
    return 2;
  }
  int failures = 0;
  if (!at_start.empty()) {
    std::printf("FAIL: handlers installed before main: %s\n", at_start.c_str());
    failures++;
  } else {
    std::printf("ok: no signal handlers at the start of main\n");
  }
  for (const char* transport : {"shm", "tcp", "fabric"}) {
    char message[1024] = {};
    int rc = sparsekv_probe(argv[1], transport, message, sizeof(message));
    if (rc == 2) {
      std::printf("SKIPPED: %s: %s\n", transport, message);
      continue;
    }
    std::printf("%s: %s: %s\n", rc == 0 ? "ok" : "FAIL", transport, message);
    failures += rc == 0 ? 0 : 1;
    const std::string now = Handlers();
    if (!now.empty()) {
      std::printf("FAIL: after %s: handlers installed: %s\n", transport, now.c_str());
      failures++;
    }
  }
  pid_t child = fork();
  if (child == 0) {
    *reinterpret_cast<volatile int*>(16) = 1;  // a crash, as a bug in the host would cause
    _exit(0);
  }
  int status = 0;
  waitpid(child, &status, 0);
  if (WIFSIGNALED(status) && WTERMSIG(status) == SIGSEGV) {
    std::printf("ok: a faulting child dies by SIGSEGV\n");
  } else {
    std::printf("FAIL: a faulting child ended with status %d, not by SIGSEGV\n", status);
    failures++;
  }
  return failures == 0 ? 0 : 1;
}
