#include "common/host_id.h"

#include <unistd.h>

#include <fstream>

namespace sparsekv {

std::string LocalHostId() {
  for (const char* path : {"/etc/machine-id", "/proc/sys/kernel/random/boot_id"}) {
    std::ifstream in(path);
    std::string id;
    if (in >> id && !id.empty()) return id;
  }
  char name[256] = {};
  gethostname(name, sizeof(name) - 1);
  return name;
}

}  // namespace sparsekv
