// sparsekvctl: the admin CLI for sparsekvd, over gRPC.
//
//   sparsekvctl [--server HOST:PORT|unix:PATH] [--json] [--timeout-ms N] COMMAND [ARGS]
//
// Exit codes scripts can rely on: 0 success; 1 the daemon refused the request (the message
// says why; e.g. the region does not exist); 2 bad usage; 3 the daemon is unreachable or did
// not answer in time.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/grpc_status.h"
#include "common/grpc_tls.h"
#include "common/size_parse.h"
#include "common/version.h"
#include "server/ctl/cluster_ctl.h"
#include "sparsekv/v1/control.grpc.pb.h"

namespace sparsekv {
namespace {

constexpr int kExitRefused = 1, kExitUsage = 2, kExitUnreachable = 3;

constexpr char kUsage[] =
    "usage: sparsekvctl [--server HOST:PORT|unix:PATH | --cluster etcd://HOST:PORT/NAME] [--json] [--timeout-ms N]\n"
    "                   [--token T] [--tls-ca PEM] [--tls-cert PEM --tls-key PEM] COMMAND\n"
    "\n"
    "commands:\n"
    "  status              pool size, used, free, regions, leases, evictions, backing\n"
    "  regions [PREFIX]    list regions (optionally only keys starting with PREFIX)\n"
    "  region KEY          one region in detail\n"
    "  delete KEY          delete a region (its memory is reused once its leases expire)\n"
    "  verify KEY          re-read a sealed region and check it against its seal-time checksum\n"
    "  evict --bytes N     evict sealed, unleased regions, least recently used first, until N\n"
    "                      bytes are freed (N like 512MiB)\n"
    "  drain [--off]       refuse new regions (existing ones stay readable); --off accepts again\n"
    "  config              the daemon's effective configuration\n"
    "  metrics             the Prometheus metrics the daemon exports\n"
    "  tenants             tenants and the memory each holds\n"
    "\n"
    "with --cluster URL (or $SPARSEKV_CLUSTER), the cluster on etcd:\n"
    "  status              nodes live/draining/lost, capacity and use in all, regions lost or short of copies\n"
    "  nodes               every node: control address, zone, pool, used, free, regions, leases, state,\n"
    "                      last heartbeat (lost nodes too)\n"
    "  regions [PREFIX]    the region directory: key, nodes holding it, sealed, copies live/wanted, state\n"
    "  drain NODE [--off]  stop placing regions on NODE (--off: place again)\n"
    "        [--move]      ... and move its sealed regions to other nodes (node to node) before it leaves\n"
    "  replicate KEY N     copy a sealed region until N live nodes hold it\n"
    "\n"
    "--server defaults to $SPARSEKV_SERVER, else 127.0.0.1:7370. --token (an admin token sees every\n"
    "tenant; region keys are then TENANT/KEY), --tls-ca, --tls-cert and --tls-key default to\n"
    "$SPARSEKV_TOKEN, $SPARSEKV_TLS_CA, $SPARSEKV_TLS_CERT and $SPARSEKV_TLS_KEY.\n"
    "exit codes: 0 ok, 1 refused by the daemon, 2 usage, 3 daemon unreachable.\n";

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') absl::StrAppend(&out, "\\", std::string(1, c));
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20) absl::StrAppendFormat(&out, "\\u%04x", c);
    else out.push_back(static_cast<char>(c));
  }
  return out + "\"";
}

template <typename Strings>
std::string JsonStringArray(const Strings& items) {
  std::string out = "[";
  for (const auto& s : items) absl::StrAppend(&out, out.size() > 1 ? "," : "", JsonString(s));
  return out + "]";
}

std::string JsonClientTransports(const v1::StatsResponse& st) {
  std::string out = "[";
  for (const auto& c : st.client_transports()) {
    absl::StrAppend(&out, out.size() > 1 ? "," : "", "{\"client_id\":", JsonString(c.client_id()),
                    ",\"transport\":", JsonString(c.transport()), ",\"reason\":", JsonString(c.reason()),
                    ",\"last_report_ms_ago\":", c.last_report_ms_ago(), "}");
  }
  return out + "]";
}

std::string Age(int64_t unix_ms) {
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch()).count();
  double s = (now - unix_ms) / 1000.0;
  if (s < 120) return absl::StrFormat("%.1fs", s);
  if (s < 7200) return absl::StrFormat("%.1fm", s / 60);
  return absl::StrFormat("%.1fh", s / 3600);
}

std::string RegionJson(const v1::RegionInfo& r) {
  return absl::StrFormat(
      "{\"key\":%s,\"region_id\":%d,\"layers\":%d,\"entry_bytes\":%d,\"entry_stride_bytes\":%d,"
      "\"tokens_per_page\":%d,\"capacity_tokens\":%d,\"committed_tokens\":%d,\"sealed\":%s,"
      "\"bytes\":%d,\"created_unix_ms\":%d,\"last_access_unix_ms\":%d,\"ttl_ms\":%d,"
      "\"active_leases\":%d,\"checksum\":%s}",
      JsonString(r.key()), r.region_id(), r.geometry().layers(), r.geometry().entry_bytes(),
      r.geometry().entry_stride_bytes(), r.geometry().tokens_per_page(), r.capacity_tokens(),
      r.committed_tokens(), r.sealed() ? "true" : "false", r.bytes(), r.created_unix_ms(),
      r.last_access_unix_ms(), r.ttl_ms(), r.active_leases(),
      r.has_checksum() ? absl::StrFormat("\"%016x\"", r.checksum()) : std::string("null"));
}

int Fail(const grpc::Status& status, const std::string& server) {
  absl::Status s = FromGrpcStatus(status);
  bool unreachable = s.code() == absl::StatusCode::kUnavailable ||
                     s.code() == absl::StatusCode::kDeadlineExceeded;
  if (unreachable) {
    std::fprintf(stderr, "sparsekvctl: daemon at %s is unreachable: %s\n", server.c_str(),
                 std::string(s.message()).c_str());
    return kExitUnreachable;
  }
  std::fprintf(stderr, "sparsekvctl: %s: %s\n", absl::StatusCodeToString(s.code()).c_str(),
               std::string(s.message()).c_str());
  return kExitRefused;
}

int Usage(const std::string& why) {
  if (!why.empty()) std::fprintf(stderr, "sparsekvctl: %s\n\n", why.c_str());
  std::fputs(kUsage, stderr);
  return kExitUsage;
}

int Main(int argc, char** argv) {
  std::string server = getenv("SPARSEKV_SERVER") ? getenv("SPARSEKV_SERVER") : "127.0.0.1:7370";
  std::string cluster = getenv("SPARSEKV_CLUSTER") ? getenv("SPARSEKV_CLUSTER") : "";
  bool json = false;
  int64_t timeout_ms = 5000;
  ControlPlaneSecurity security;
  std::vector<std::string> rest;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--version") {
      std::printf("sparsekvctl %s\n", kVersion);
      return 0;
    } else if (a == "--json") {
      json = true;
    } else if (a == "--cluster") {
      if (i + 1 >= argc) return Usage(a + " needs a value");
      cluster = argv[++i];
    } else if (a == "--server" || a == "--timeout-ms" || a == "--token" || a == "--tls-ca" || a == "--tls-cert" ||
               a == "--tls-key") {
      if (i + 1 >= argc) return Usage(a + " needs a value");
      std::string v = argv[++i];
      if (a == "--server") server = v;
      else if (a == "--token") security.token = v;
      else if (a == "--tls-ca") security.ca_file = v;
      else if (a == "--tls-cert") security.cert_file = v;
      else if (a == "--tls-key") security.key_file = v;
      else if (!absl::SimpleAtoi(v, &timeout_ms) || timeout_ms <= 0) return Usage("--timeout-ms needs a positive number");
    } else if (a.rfind("--server=", 0) == 0) {
      server = a.substr(9);
    } else {
      rest.push_back(a);
    }
  }
  if (rest.empty()) return Usage("no command given");
  const std::string command = rest[0];

  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(64 << 20);
  security = WithEnvironment(security);
  auto credentials = ChannelCredentialsFor(security);
  if (!credentials.ok()) return Usage(std::string(credentials.status().message()));
  if (!cluster.empty()) return ClusterMain(cluster, rest, json, timeout_ms, *credentials, security.token);
  auto channel = grpc::CreateCustomChannel(server, *credentials, channel_args);
  auto stub = v1::Control::NewStub(channel);
  auto context = [&] {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!security.token.empty()) ctx->AddMetadata("authorization", "Bearer " + security.token);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
    return ctx;
  };

  if (command == "status") {
    if (rest.size() != 1) return Usage("status takes no arguments");
    v1::StatsResponse st;
    auto ctx = context();
    if (auto s = stub->Stats(ctx.get(), v1::StatsRequest(), &st); !s.ok()) return Fail(s, server);
    if (json) {
      std::printf(
          "{\"server\":%s,\"version\":%s,\"backing\":%s,\"backing_detail\":%s,\"pool_bytes\":%d,"
          "\"used_bytes\":%d,\"free_bytes\":%d,\"quarantined_bytes\":%d,\"page_bytes\":%d,"
          "\"regions\":%d,\"sealed_regions\":%d,\"active_leases\":%d,\"evictions\":%d,"
          "\"evicted_bytes\":%d,\"expired_regions\":%d,\"abandoned_regions\":%d,\"creates\":%d,\"deletes\":%d,"
          "\"lease_ms\":%d,\"uptime_ms\":%d,\"draining\":%s,\"data_paths\":%s,\"client_transports\":%s}\n",
          JsonString(server).c_str(), JsonString(kVersion).c_str(), JsonString(st.backing()).c_str(),
          JsonString(st.backing_detail()).c_str(), st.pool_bytes(), st.used_bytes(), st.free_bytes(),
          st.quarantined_bytes(), st.page_bytes(), st.regions(), st.sealed_regions(),
          st.active_leases(), st.evictions(), st.evicted_bytes(), st.expired_regions(), st.abandoned_regions(),
          st.creates(), st.deletes(), st.lease_ms(), st.uptime_ms(), st.draining() ? "true" : "false",
          JsonStringArray(st.data_paths()).c_str(), JsonClientTransports(st).c_str());
    } else {
      double pct = st.pool_bytes() ? 100.0 * st.used_bytes() / st.pool_bytes() : 0;
      std::printf("server        %s\n", server.c_str());
      std::printf("backing       %s\n", st.backing_detail().c_str());
      std::printf("pool          %s in pages of %s\n", FormatBytes(st.pool_bytes()).c_str(), FormatBytes(st.page_bytes()).c_str());
      std::printf("used          %s (%.1f%%)\n", FormatBytes(st.used_bytes()).c_str(), pct);
      std::printf("free          %s\n", FormatBytes(st.free_bytes()).c_str());
      std::printf("quarantined   %s (freed, waiting for leases to expire)\n", FormatBytes(st.quarantined_bytes()).c_str());
      std::printf("regions       %d (%d sealed)\n", static_cast<int>(st.regions()), static_cast<int>(st.sealed_regions()));
      std::printf("leases        %d active (lease %d ms)\n", static_cast<int>(st.active_leases()), static_cast<int>(st.lease_ms()));
      std::printf("evictions     %d (%s); %d regions expired by TTL\n", static_cast<int>(st.evictions()),
                  FormatBytes(st.evicted_bytes()).c_str(), static_cast<int>(st.expired_regions()));
      std::printf("operations    %d creates, %d deletes\n", static_cast<int>(st.creates()), static_cast<int>(st.deletes()));
      std::printf("uptime        %.1fs\n", st.uptime_ms() / 1000.0);
      if (st.draining()) std::printf("draining      yes: new regions are refused\n");
      for (int i = 0; i < st.data_paths_size(); ++i) {
        std::printf("%s%s\n", i == 0 ? "data paths    " : "              ", st.data_paths(i).c_str());
      }
      if (st.client_transports_size() == 0) std::printf("clients       none holding leases\n");
      for (int i = 0; i < st.client_transports_size(); ++i) {
        const auto& c = st.client_transports(i);
        std::printf("%s%s: %s, because %s\n", i == 0 ? "clients       " : "              ", c.client_id().c_str(),
                    c.transport().c_str(), c.reason().c_str());
      }
    }
    return 0;
  }
  if (command == "regions") {
    if (rest.size() > 2) return Usage("regions takes at most one PREFIX");
    v1::ListRegionsRequest req;
    if (rest.size() == 2) req.set_key_prefix(rest[1]);
    req.set_limit(10000);
    v1::ListRegionsResponse resp;
    auto ctx = context();
    if (auto s = stub->ListRegions(ctx.get(), req, &resp); !s.ok()) return Fail(s, server);
    if (json) {
      std::string out = "{\"regions\":[";
      for (int i = 0; i < resp.regions_size(); ++i) {
        absl::StrAppend(&out, i ? "," : "", RegionJson(resp.regions(i)));
      }
      absl::StrAppend(&out, "],\"truncated\":", resp.truncated() ? "true" : "false", "}\n");
      std::fputs(out.c_str(), stdout);
    } else {
      std::printf("%-32s %6s %6s %10s %10s %7s %11s %7s %7s\n", "KEY", "LAYERS", "ENTRY", "COMMITTED",
                  "CAPACITY", "SEALED", "BYTES", "LEASES", "AGE");
      for (const auto& r : resp.regions()) {
        std::printf("%-32s %6d %6d %10lld %10lld %7s %11s %7d %7s\n", r.key().c_str(), r.geometry().layers(),
                    r.geometry().entry_bytes(), static_cast<long long>(r.committed_tokens()),
                    static_cast<long long>(r.capacity_tokens()), r.sealed() ? "yes" : "no",
                    FormatBytes(r.bytes()).c_str(), r.active_leases(), Age(r.created_unix_ms()).c_str());
      }
      std::printf("%d region(s)%s\n", resp.regions_size(), resp.truncated() ? " (truncated)" : "");
    }
    return 0;
  }
  if (command == "region") {
    if (rest.size() != 2) return Usage("region needs exactly one KEY");
    v1::GetRegionRequest req;
    req.set_key(rest[1]);
    v1::RegionInfo r;
    auto ctx = context();
    if (auto s = stub->GetRegion(ctx.get(), req, &r); !s.ok()) return Fail(s, server);
    if (json) {
      std::printf("%s\n", RegionJson(r).c_str());
    } else {
      std::printf("key              %s\n", r.key().c_str());
      std::printf("region id        %llu\n", static_cast<unsigned long long>(r.region_id()));
      std::printf("geometry         %d layers x %d-byte entries (stride %d, %d tokens per %s page)\n",
                  r.geometry().layers(), r.geometry().entry_bytes(), r.geometry().entry_stride_bytes(),
                  r.geometry().tokens_per_page(), FormatBytes(r.geometry().page_bytes()).c_str());
      std::printf("committed        %lld of %lld tokens%s\n", static_cast<long long>(r.committed_tokens()),
                  static_cast<long long>(r.capacity_tokens()), r.sealed() ? " (sealed)" : "");
      std::printf("memory           %s\n", FormatBytes(r.bytes()).c_str());
      std::printf("leases           %d active\n", r.active_leases());
      std::printf("age              %s (last access %s ago)\n", Age(r.created_unix_ms()).c_str(),
                  Age(r.last_access_unix_ms()).c_str());
      std::printf("ttl              %s\n", r.ttl_ms() ? absl::StrCat(r.ttl_ms(), " ms idle").c_str() : "none");
    }
    return 0;
  }
  if (command == "delete") {
    if (rest.size() != 2) return Usage("delete needs exactly one KEY");
    v1::DeleteRegionRequest req;
    req.set_key(rest[1]);
    v1::DeleteRegionResponse resp;
    auto ctx = context();
    if (auto s = stub->DeleteRegion(ctx.get(), req, &resp); !s.ok()) return Fail(s, server);
    if (json) {
      std::printf("{\"deleted\":%s,\"freed_bytes\":%d,\"memory_held_by_leases\":%s}\n",
                  JsonString(rest[1]).c_str(), resp.freed_bytes(), resp.memory_held_by_leases() ? "true" : "false");
    } else {
      std::printf("deleted '%s': %s freed%s\n", rest[1].c_str(), FormatBytes(resp.freed_bytes()).c_str(),
                  resp.memory_held_by_leases() ? " (reused once the open leases expire)" : "");
    }
    return 0;
  }
  if (command == "evict") {
    int64_t bytes = -1;
    for (size_t i = 1; i < rest.size(); ++i) {
      std::string value;
      if (rest[i] == "--bytes" && i + 1 < rest.size()) value = rest[++i];
      else if (rest[i].rfind("--bytes=", 0) == 0) value = rest[i].substr(8);
      else return Usage(absl::StrCat("evict: unexpected argument '", rest[i], "'"));
      auto parsed = ParseSize(value);
      if (!parsed.ok()) return Usage(absl::StrCat("evict --bytes: ", parsed.status().message()));
      bytes = *parsed;
    }
    if (bytes <= 0) return Usage("evict needs --bytes N with N > 0");
    v1::EvictRequest req;
    req.set_bytes(bytes);
    v1::EvictResponse resp;
    auto ctx = context();
    if (auto s = stub->Evict(ctx.get(), req, &resp); !s.ok()) return Fail(s, server);
    if (json) {
      std::string keys;
      for (int i = 0; i < resp.evicted_keys_size(); ++i) absl::StrAppend(&keys, i ? "," : "", JsonString(resp.evicted_keys(i)));
      std::printf("{\"requested_bytes\":%lld,\"evicted_bytes\":%lld,\"evicted_keys\":[%s]}\n",
                  static_cast<long long>(bytes), static_cast<long long>(resp.evicted_bytes()), keys.c_str());
    } else {
      std::printf("evicted %d region(s), %s of %s requested\n", resp.evicted_keys_size(),
                  FormatBytes(resp.evicted_bytes()).c_str(), FormatBytes(bytes).c_str());
      for (const auto& k : resp.evicted_keys()) std::printf("  %s\n", k.c_str());
    }
    return resp.evicted_bytes() >= bytes ? 0 : kExitRefused;
  }
  if (command == "verify") {
    if (rest.size() != 2) return Usage("verify needs exactly one KEY");
    v1::VerifyRegionRequest req;
    req.set_key(rest[1]);
    v1::VerifyRegionResponse resp;
    auto ctx = context();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(std::max<int64_t>(timeout_ms, 60000)));
    if (auto s = stub->VerifyRegion(ctx.get(), req, &resp); !s.ok()) return Fail(s, server);
    if (json) {
      std::printf("{\"key\":%s,\"ok\":true,\"checksum\":\"%016llx\",\"bytes_checked\":%lld}\n", JsonString(rest[1]).c_str(),
                  static_cast<unsigned long long>(resp.checksum()), static_cast<long long>(resp.bytes_checked()));
    } else {
      std::printf("region '%s' OK: %s checked, checksum %016llx matches the seal\n", rest[1].c_str(),
                  FormatBytes(resp.bytes_checked()).c_str(), static_cast<unsigned long long>(resp.checksum()));
    }
    return 0;
  }
  if (command == "drain") {
    bool enable = true;
    for (size_t i = 1; i < rest.size(); ++i) {
      if (rest[i] == "--off") enable = false;
      else return Usage(absl::StrCat("drain: unexpected argument '", rest[i], "'"));
    }
    v1::DrainRequest req;
    req.set_enable(enable);
    v1::DrainResponse resp;
    auto ctx = context();
    if (auto s = stub->Drain(ctx.get(), req, &resp); !s.ok()) return Fail(s, server);
    if (json) std::printf("{\"draining\":%s}\n", resp.draining() ? "true" : "false");
    else std::printf("%s\n", resp.draining() ? "draining: new regions are refused; existing regions stay readable"
                                              : "accepting new regions");
    return 0;
  }
  if (command == "config") {
    if (rest.size() != 1) return Usage("config takes no arguments");
    v1::GetConfigResponse resp;
    auto ctx = context();
    if (auto s = stub->GetConfig(ctx.get(), v1::GetConfigRequest(), &resp); !s.ok()) return Fail(s, server);
    if (json) std::printf("{\"toml\":%s}\n", JsonString(resp.toml()).c_str());
    else std::fputs(resp.toml().c_str(), stdout);
    return 0;
  }
  if (command == "metrics") {
    if (rest.size() != 1) return Usage("metrics takes no arguments");
    v1::GetMetricsResponse resp;
    auto ctx = context();
    if (auto s = stub->GetMetrics(ctx.get(), v1::GetMetricsRequest(), &resp); !s.ok()) return Fail(s, server);
    if (!json) {
      std::fputs(resp.prometheus_text().c_str(), stdout);
      return 0;
    }
    // One JSON object: {"name{labels}": value, ...}, comments left out.
    std::string out = "{";
    bool first = true;
    for (absl::string_view line : absl::StrSplit(resp.prometheus_text(), '\n')) {
      if (line.empty() || line[0] == '#') continue;
      auto space = line.rfind(' ');
      if (space == absl::string_view::npos) continue;
      absl::StrAppend(&out, first ? "" : ",", JsonString(std::string(line.substr(0, space))), ":",
                      line.substr(space + 1));
      first = false;
    }
    std::printf("%s}\n", out.c_str());
    return 0;
  }
  if (command == "tenants") {
    if (rest.size() != 1) return Usage("tenants takes no arguments");
    v1::StatsResponse st;
    auto ctx = context();
    if (auto s = stub->Stats(ctx.get(), v1::StatsRequest(), &st); !s.ok()) return Fail(s, server);
    // Without a tenants file the daemon has one implicit tenant, "default", with the whole pool.
    if (st.tenants_size() == 0) {
      auto* t = st.add_tenants();
      t->set_name("default");
      t->set_used_bytes(st.used_bytes());
      t->set_regions(st.regions());
      t->set_quota_bytes(st.pool_bytes());
    }
    if (json) {
      std::string out = "{\"tenants\":[";
      for (const auto& t : st.tenants()) {
        absl::StrAppend(&out, out.back() == '[' ? "" : ",", "{\"name\":", JsonString(t.name()), ",\"used_bytes\":",
                        t.used_bytes(), ",\"regions\":", t.regions(), ",\"quota_bytes\":", t.quota_bytes(),
                        ",\"max_regions\":", t.max_regions(), ",\"guarantee_bytes\":", t.guarantee_bytes(), "}");
      }
      std::printf("%s]}\n", out.c_str());
    } else {
      std::printf("%-16s %12s %8s %12s %12s %12s\n", "TENANT", "USED", "REGIONS", "QUOTA", "MAX_REGIONS", "GUARANTEE");
      for (const auto& t : st.tenants()) {
        std::printf("%-16s %12s %8lld %12s %12s %12s\n", t.name().c_str(), FormatBytes(t.used_bytes()).c_str(),
                    static_cast<long long>(t.regions()),
                    t.quota_bytes() ? FormatBytes(t.quota_bytes()).c_str() : "-",
                    t.max_regions() ? absl::StrCat(t.max_regions()).c_str() : "-",
                    t.guarantee_bytes() ? FormatBytes(t.guarantee_bytes()).c_str() : "-");
      }
    }
    return 0;
  }
  return Usage(absl::StrCat("unknown command '", command, "'"));
}

}  // namespace
}  // namespace sparsekv

int main(int argc, char** argv) { return sparsekv::Main(argc, argv); }
