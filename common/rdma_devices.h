// The RDMA devices of this host (rdma-core). Used by the verbs plugin and by tests that must say
// "SKIPPED: no RDMA device"; not by libsparsekv itself, which loads rdma-core only on demand.
#ifndef SPARSEKV_COMMON_RDMA_DEVICES_H_
#define SPARSEKV_COMMON_RDMA_DEVICES_H_

#include <string>
#include <vector>

namespace sparsekv {

// Names of the RDMA devices on this host (ibv_get_device_list); empty without any.
std::vector<std::string> RdmaDevices();

}  // namespace sparsekv

#endif  // SPARSEKV_COMMON_RDMA_DEVICES_H_
