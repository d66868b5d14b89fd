#include "common/rdma_devices.h"

#include <infiniband/verbs.h>

namespace sparsekv {

std::vector<std::string> RdmaDevices() {
  std::vector<std::string> names;
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  for (int i = 0; list != nullptr && i < n; ++i) names.push_back(ibv_get_device_name(list[i]));
  if (list != nullptr) ibv_free_device_list(list);
  return names;
}

}  // namespace sparsekv
