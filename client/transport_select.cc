// Which data-plane transport a region is read through: the daemon's descriptor, the options and
// what this host can reach (shm where the pool maps here, else tcp-gather, fabric or verbs).
#include "client/client_state.h"

namespace sparsekv {

absl::StatusOr<std::shared_ptr<Transport>> Client::Impl::TransportFor(const v1::TransportDescriptor& d) {
  std::string choice = options.transport == "tcp-gather" ? "tcp" : options.transport;
  if (choice != "auto" && choice != "shm" && choice != "tcp" && choice != "fabric" && choice != "verbs") {
    return absl::InvalidArgumentError(absl::StrFormat(
        "transport '%s' is not one of auto, shm, verbs, fabric, tcp", options.transport));
  }
  const auto& shm = d.shm();
  // One transport per pool and data-plane address: a restarted daemon may listen elsewhere.
  const std::string cache_key =
      absl::StrCat(choice, "|", shm.pool_uuid(), "|", d.gather_host(), ":", d.gather_port(), "/", d.gather_secret(), "|",
                   absl::BytesToHexString(d.fabric().address()), "|", d.verbs().host(), ":", d.verbs().port());
  {
    absl::MutexLock lock(&mu);
    if (auto it = transports.find(cache_key); it != transports.end()) return it->second;
  }
  std::string control_host = "127.0.0.1";
  if (options.server.rfind("unix:", 0) != 0) control_host = options.server.substr(0, options.server.rfind(':'));
  std::shared_ptr<Transport> transport;
  std::vector<std::string> tried;  // why each better transport was passed over
  auto want = [&](const char* name) { return choice == "auto" || choice == name; };
  auto register_all = [&](Transport* t) -> absl::Status {
    std::map<void*, size_t> buffers;
    {
      absl::MutexLock lock(&mu);
      buffers = registered_buffers;
    }
    for (const auto& [addr, bytes] : buffers) {
      if (auto st = t->RegisterBuffer(addr, bytes); !st.ok()) return st;
    }
    return absl::OkStatus();
  };
  if (want("shm")) {
    ShmPoolAddress address{shm.fd_socket_path(), shm.path(), shm.pool_bytes(), shm.pool_uuid(), shm.host_id(),
                           shm.arena_offset()};
    auto mapped = ShmTransport::Map(address);
    if (mapped.ok()) {
      transport = *std::move(mapped);
      transport->set_reason(choice == "shm" ? "forced by ClientOptions.transport" : "the pool can be mapped on this host");
    } else {
      tried.push_back(absl::StrCat("shm/CXL: ", mapped.status().message()));
    }
  }
  if (transport == nullptr && want("verbs")) {
    if (!d.has_verbs()) {
      tried.push_back("verbs: the daemon has no RDMA device");
    } else {
      auto opened = OpenVerbsTransport(d.verbs(), control_host, options.rpc_timeout_ms);
      if (opened.ok() && !register_all(opened->get()).ok()) opened = absl::ResourceExhaustedError("cannot register the client's buffers");
      if (opened.ok()) {
        transport = *std::move(opened);
        transport->set_reason(choice == "verbs" ? "forced by ClientOptions.transport" : "an RDMA device reaches the daemon");
      } else {
        tried.push_back(absl::StrCat("verbs: ", opened.status().message()));
      }
    }
  }
  // Hardware RMA beats a server-side gather; software RMA (tcp, sockets) does not: it would
  // turn each entry into a round trip of work on both hosts.
  auto open_fabric = [&](const char* why) {
    auto opened = OpenFabricTransport(d.fabric(), control_host, options.rpc_timeout_ms, options.fabric_force_staging);
    if (!opened.ok()) {
      tried.push_back(absl::StrCat("fabric: ", opened.status().message()));
      return;
    }
    if (auto st = register_all(opened->get()); !st.ok()) {
      tried.push_back(absl::StrCat("fabric: ", st.message()));
      return;
    }
    transport = *std::move(opened);
    transport->set_reason(why);
  };
  if (transport == nullptr && want("fabric")) {
    if (!d.has_fabric()) {
      tried.push_back("fabric: the daemon offers no libfabric endpoint");
    } else if (choice == "fabric") {
      open_fabric("forced by ClientOptions.transport");
    } else if (!d.fabric().software_rma()) {
      open_fabric(absl::StrCat("hardware RMA through libfabric provider ", d.fabric().provider()).c_str());
    } else {
      tried.push_back(absl::StrCat("fabric: provider ", d.fabric().provider(),
                                   " emulates RMA in software, server-side gather preferred"));
    }
  }
  // The daemon's tcp-gather path: reads for clients that cannot map the pool, and the checked
  // write path of the one-sided transports.
  auto tcp_gather = [&]() -> std::shared_ptr<Transport> {
    // 0.0.0.0 means: the host this client reached the control plane on.
    std::string host = d.gather_host();
    if (host.empty() || host == "0.0.0.0") host = control_host;
    return std::make_shared<TcpGatherTransport>(host, d.gather_port(), options.rpc_timeout_ms,
                                                options.data_connections, d.gather_secret());
  };
  if (transport == nullptr && want("tcp")) {
    if (d.gather_port() <= 0) {
      tried.push_back("tcp-gather: the daemon offers no tcp-gather path");
    } else {
      transport = tcp_gather();
      transport->set_reason(choice == "tcp" ? "forced by ClientOptions.transport" : "server-side gather over TCP");
    }
  }
  if (transport == nullptr && choice == "auto" && d.has_fabric() && d.fabric().software_rma()) {
    open_fabric("the only path left: libfabric RMA in software");
  }
  if (transport == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat("no data-plane transport reaches the pool of ", options.server,
                                                      " (transport ", choice, "): ", absl::StrJoin(tried, "; ")));
  }
  // One-sided transports read only; their writes go through the daemon's checked tcp-gather path.
  if (auto* rma = dynamic_cast<RmaTransport*>(transport.get()); rma != nullptr && d.gather_port() > 0) {
    rma->set_write_path(tcp_gather());
  }
  if (!tried.empty() && choice == "auto") {
    transport->set_reason(absl::StrCat(transport->reason(), " (passed over: ", absl::StrJoin(tried, "; "), ")"));
  }
  SKV_LOG_INFO("sparsekv", "data plane to %s: %s, because %s", options.server, transport->name(), transport->reason());
  absl::MutexLock lock(&mu);
  auto [it, inserted] = transports.emplace(cache_key, transport);
  return it->second;
}

}  // namespace sparsekv
