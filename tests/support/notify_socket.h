// NotifySocket plays systemd's side of sd_notify in tests: a datagram socket that the daemon,
// started with NOTIFY_SOCKET=path(), reports READY/STATUS/WATCHDOG/FDSTORE messages to.
#ifndef SPARSEKV_TESTS_SUPPORT_NOTIFY_SOCKET_H_
#define SPARSEKV_TESTS_SUPPORT_NOTIFY_SOCKET_H_

#include <string>

namespace sparsekv::testing {

class NotifySocket {
 public:
  explicit NotifySocket(std::string path);
  ~NotifySocket();
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  const std::string& path() const { return path_; }
  // Receives for `ms` milliseconds, appending each message and a newline to received().
  void Receive(int ms);
  // Receives until a message contains `text` or `ms` pass; true if it came.
  bool ReceiveUntil(const std::string& text, int ms);
  const std::string& received() const { return received_; }
  // The first descriptor that came with FDSTORE=1 (owned by this object), or -1.
  int stored_fd() const { return stored_fd_; }

 private:
  bool ReceiveOne(int timeout_ms);

  std::string path_;
  int sock_ = -1;
  std::string received_;
  int stored_fd_ = -1;
};

}  // namespace sparsekv::testing

#endif  // SPARSEKV_TESTS_SUPPORT_NOTIFY_SOCKET_H_
