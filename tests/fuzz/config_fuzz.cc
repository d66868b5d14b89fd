// Fuzz target: config text and the sizes in it. Must never crash; any error must be a status.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/config.h"
#include "common/size_parse.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  sparsekv::DaemonConfig config;
  if (sparsekv::LoadConfigText(text, "fuzz.toml", &config).ok()) {
    (void)sparsekv::ValidateConfig(config);
    (void)sparsekv::DescribeConfig(config);
  }
  (void)sparsekv::ParseSize(text.substr(0, 64));
  return 0;
}
