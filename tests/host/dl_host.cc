// A host that installs its own SIGSEGV handler and then loads libsparsekv with dlopen (through a
// module linked with it, as Python imports an extension): after fetches over shm, tcp and (where
// a provider loads) fabric, its handler must still be the one in place.
//   dl_host SERVER MODULE
#include <dlfcn.h>
#include <signal.h>

#include <cstdio>
#include <cstring>
#include <initializer_list>

namespace {
void OwnHandler(int) {}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: dl_host SERVER MODULE\n");
    return 2;
  }
  struct sigaction own {};
  own.sa_handler = &OwnHandler;
  sigaction(SIGSEGV, &own, nullptr);
  sigaction(SIGBUS, &own, nullptr);
  void* module = dlopen(argv[2], RTLD_NOW | RTLD_LOCAL);
  if (module == nullptr) {
    std::printf("FAIL: dlopen %s: %s\n", argv[2], dlerror());
    return 1;
  }
  auto probe = reinterpret_cast<int (*)(const char*, const char*, char*, size_t)>(dlsym(module, "sparsekv_probe"));
  if (probe == nullptr) {
    std::printf("FAIL: no sparsekv_probe in %s\n", argv[2]);
    return 1;
  }
  int failures = 0;
  for (const char* transport : {"shm", "tcp", "fabric"}) {
    char message[1024] = {};
    int rc = probe(argv[1], transport, message, sizeof(message));
    if (rc == 2) {
      std::printf("SKIPPED: %s: %s\n", transport, message);
      continue;
    }
    std::printf("%s: %s: %s\n", rc == 0 ? "ok" : "FAIL", transport, message);
    failures += rc == 0 ? 0 : 1;
    for (int sig : {SIGSEGV, SIGBUS}) {
      struct sigaction now {};
      sigaction(sig, nullptr, &now);
      if ((now.sa_flags & SA_SIGINFO) || now.sa_handler != &OwnHandler) {
        std::printf("FAIL: after %s: the host's own %s handler was replaced\n", transport, strsignal(sig));
        failures++;
      }
    }
  }
  if (failures == 0) std::printf("ok: the host's own handlers survived\n");
  return failures == 0 ? 0 : 1;
}
