#include "client/rma_loader.h"

#include <dlfcn.h>
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/rma_plugin.h"
#include "common/log.h"

#ifndef SPARSEKV_RMA_PLUGIN_INSTALLED
#define SPARSEKV_RMA_PLUGIN_INSTALLED ""
#endif
#ifndef SPARSEKV_RMA_PLUGIN_BUILD
#define SPARSEKV_RMA_PLUGIN_BUILD ""
#endif

namespace sparsekv {
namespace {

constexpr char kPluginFile[] = "libsparsekv-rma.so";

// Every signal's disposition, taken before foreign code runs and put back after it.
class SignalDispositionGuard {
 public:
  explicit SignalDispositionGuard(const char* what) : what_(what) {
    for (int sig = 1; sig < NSIG; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP) continue;
      struct sigaction old {};
      if (sigaction(sig, nullptr, &old) == 0) saved_.push_back({sig, old});
    }
  }
  ~SignalDispositionGuard() {
    std::vector<std::string> changed;
    for (const auto& [sig, old] : saved_) {
      struct sigaction now {};
      if (sigaction(sig, nullptr, &now) != 0) continue;
      const bool same = (now.sa_flags & SA_SIGINFO) == (old.sa_flags & SA_SIGINFO) &&
                        ((now.sa_flags & SA_SIGINFO) ? now.sa_sigaction == old.sa_sigaction
                                                     : now.sa_handler == old.sa_handler);
      if (same) continue;
      sigaction(sig, &old, nullptr);
      changed.push_back(strsignal(sig));
    }
    if (!changed.empty()) {
      SKV_LOG_INFO("sparsekv", "%s installed handlers for %s; the process's own dispositions are restored", what_,
                   absl::StrJoin(changed, ", "));
    }
  }

 private:
  const char* what_;
  std::vector<std::pair<int, struct sigaction>> saved_;
};

struct Loaded {
  const RmaPlugin* plugin = nullptr;
  std::string path;
  absl::Status error;
};

std::atomic<bool> g_loaded{false};

std::vector<std::string> Candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("SPARSEKV_RMA_PLUGIN"); env != nullptr && *env != '\0') out.push_back(env);
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&OpenFabricTransport), &info) != 0 && info.dli_fname != nullptr) {
    std::string self = info.dli_fname;
    if (auto slash = self.rfind('/'); slash != std::string::npos) {
      out.push_back(absl::StrCat(self.substr(0, slash), "/sparsekv/", kPluginFile));
      out.push_back(absl::StrCat(self.substr(0, slash), "/", kPluginFile));
    }
  }
  if (*SPARSEKV_RMA_PLUGIN_INSTALLED) out.push_back(SPARSEKV_RMA_PLUGIN_INSTALLED);
  if (*SPARSEKV_RMA_PLUGIN_BUILD) out.push_back(SPARSEKV_RMA_PLUGIN_BUILD);
  return out;
}

const Loaded& Load() {
  static const Loaded* loaded = [] {
    auto* l = new Loaded();
    std::vector<std::string> tried;
    SignalDispositionGuard guard("loading libfabric and rdma-core");
    for (const std::string& path : Candidates()) {
      void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) {
        const char* why = dlerror();
        tried.push_back(absl::StrCat(path, " (", why ? why : "not loadable", ")"));
        continue;
      }
      auto entry = reinterpret_cast<const RmaPlugin* (*)()>(dlsym(handle, "sparsekv_rma_plugin"));
      const RmaPlugin* plugin = entry != nullptr ? entry() : nullptr;
      if (plugin == nullptr || plugin->abi != kRmaPluginAbi) {
        tried.push_back(absl::StrCat(path, " (not a sparsekv RMA plugin of this version)"));
        dlclose(handle);
        continue;
      }
      l->plugin = plugin;  // never unloaded: transports from it live as long as their clients
      l->path = path;
      g_loaded = true;
      return l;
    }
    l->error = absl::FailedPreconditionError(absl::StrCat(
        "the fabric and verbs transports need ", kPluginFile,
        " (libfabric and rdma-core), which this process cannot load: tried ", absl::StrJoin(tried, "; "),
        "; set SPARSEKV_RMA_PLUGIN to its path, or use the shm or tcp transport"));
    return l;
  }();
  return *loaded;
}

}  // namespace

absl::StatusOr<std::shared_ptr<RmaTransport>> OpenFabricTransport(const v1::FabricDescriptor& d,
                                                                  const std::string& control_host,
                                                                  int64_t timeout_ms, bool force_staging) {
  const Loaded& l = Load();
  if (l.plugin == nullptr) return l.error;
  FabricPeer peer{d.provider(), d.addr_format(), d.address(), d.key(), d.base(), d.mr_mode(), d.software_rma()};
  SignalDispositionGuard guard("libfabric's providers");
  return l.plugin->open_fabric(peer, control_host, timeout_ms, force_staging);
}

absl::StatusOr<std::shared_ptr<RmaTransport>> OpenVerbsTransport(const v1::VerbsDescriptor& d,
                                                                 const std::string& control_host, int64_t timeout_ms) {
  const Loaded& l = Load();
  if (l.plugin == nullptr) return l.error;
  VerbsPeer peer{d.host(), d.port(), d.base(), d.rkey(), d.device()};
  SignalDispositionGuard guard("rdma-core");
  return l.plugin->open_verbs(peer, control_host, timeout_ms);
}

bool RmaPluginLoaded() { return g_loaded.load(); }

std::string RmaPluginPath() { return g_loaded.load() ? Load().path : std::string(); }

}  // namespace sparsekv
