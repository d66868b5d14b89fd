// A real etcd-server (Debian's /usr/bin/etcd) for the cluster tests and benchmark: one member on
// loopback, ephemeral ports, its own data directory; stopped and started again on the same ports
// and data (an etcd outage), killed with the test.
#ifndef SPARSEKV_TESTS_SUPPORT_ETCD_FIXTURE_H_
#define SPARSEKV_TESTS_SUPPORT_ETCD_FIXTURE_H_

#include <sys/types.h>

#include <string>

#include "tests/support/daemon_fixture.h"

namespace sparsekv::testing {

class EtcdFixture {
 public:
  static constexpr const char* kPath = "/usr/bin/etcd";
  static bool Installed();
  EtcdFixture();  // starts it; throws if it does not answer within 30 s
  ~EtcdFixture();
  EtcdFixture(const EtcdFixture&) = delete;
  EtcdFixture& operator=(const EtcdFixture&) = delete;

  const std::string& endpoint() const { return endpoint_; }  // 127.0.0.1:PORT
  std::string Url(const std::string& name) const { return "etcd://" + endpoint_ + "/" + name; }
  void Stop();   // SIGTERM and wait
  void Start();  // same ports, same data
  std::string Log() const;

 private:
  TempDir dir_;
  int client_port_ = 0, peer_port_ = 0;
  std::string endpoint_;
  pid_t pid_ = -1;
};

// A free TCP port on 127.0.0.1 (bound and released: good for a process started right after).
int FreeLoopbackPort();

}  // namespace sparsekv::testing

#endif  // SPARSEKV_TESTS_SUPPORT_ETCD_FIXTURE_H_
