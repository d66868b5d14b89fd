// Control-plane security against the real daemon: bearer tokens bound to tenants, namespaced
// keys, quotas, TLS and mutual TLS. Certificates are made by openssl for each run, never
// committed.
#include <catch2/catch.hpp>

#include <sys/stat.h>

#include <csignal>

#include <fstream>

#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include "client/rma_loader.h"
#include "client/transports/tcp_gather_transport.h"
#include "common/entry_pattern.h"
#include "common/fd_passing.h"
#include "sparsekv/v1/control.grpc.pb.h"
#include "tests/support/daemon_fixture.h"
#include "tests/support/pattern_regions.h"

using namespace sparsekv;
using namespace sparsekv::testing;

namespace {

constexpr char kTokenA[] = "tenant-a-secret-0123456789";
constexpr char kTokenB[] = "tenant-b-secret-0123456789";
constexpr char kAdmin[] = "admin-secret-0123456789abc";

std::string WriteTenants(const TempDir& dir, const std::string& extra_a = "") {
  std::string path = dir.path() + "/tenants.toml";
  std::ofstream(path) << "[admin]\ntokens = [\"" << kAdmin << "\"]\n\n"
                      << "[tenants.team-a]\ntokens = [\"" << kTokenA << "\"]\nquota = \"8MiB\"\nmax_regions = 3\n" << extra_a
                      << "\n[tenants.team-b]\ntokens = [\"" << kTokenB << "\"]\n";
  chmod(path.c_str(), 0600);
  return path;
}

absl::StatusOr<std::unique_ptr<Client>> As(const DaemonFixture& d, const std::string& token, ClientOptions o = {}) {
  o.server = d.address();
  o.token = token;
  o.rpc_timeout_ms = 3000;
  return Client::Connect(o);
}

// A CA and certificates signed by it, made with openssl in `dir`.
struct Pki {
  std::string ca, server_cert, server_key, client_cert, client_key;
};

Pki MakePki(const TempDir& dir, const std::string& name) {
  const std::string p = dir.path() + "/" + name;
  const std::string ec = " -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes ";
  std::ofstream(p + "-san.cnf") << "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
  std::string script =
      "set -e; cd " + dir.path() + "; " +
      "openssl req -x509" + ec + "-keyout " + p + "-ca.key -out " + p + "-ca.pem -days 2 -subj /CN=" + name + "-ca 2>/dev/null; " +
      "openssl req" + ec + "-keyout " + p + "-server.key -out " + p + "-server.csr -subj /CN=localhost 2>/dev/null; " +
      "openssl x509 -req -in " + p + "-server.csr -CA " + p + "-ca.pem -CAkey " + p + "-ca.key -CAcreateserial -out " + p +
      "-server.pem -days 2 -extfile " + p + "-san.cnf 2>/dev/null; " +
      "openssl req" + ec + "-keyout " + p + "-client.key -out " + p + "-client.csr -subj /CN=decoder 2>/dev/null; " +
      "openssl x509 -req -in " + p + "-client.csr -CA " + p + "-ca.pem -CAkey " + p + "-ca.key -CAcreateserial -out " + p +
      "-client.pem -days 2 2>/dev/null";
  auto made = RunCommand(script);
  REQUIRE(made.exit_code == 0);
  return {p + "-ca.pem", p + "-server.pem", p + "-server.key", p + "-client.pem", p + "-client.key"};
}

}  // namespace

TEST_CASE("security: no token or a wrong token is UNAUTHENTICATED", "[security]") {
  TempDir dir;
  DaemonFixture daemon({.extra_args = {"--tenants-file", WriteTenants(dir)}});
  for (std::string token : {std::string(), std::string("not-a-token-0123456789")}) {
    auto client = As(daemon, token);
    REQUIRE(client.ok());
    auto created = (*client)->Create({"k", 1, 656, 10, 0});
    REQUIRE(created.status().code() == absl::StatusCode::kUnauthenticated);
    REQUIRE((*client)->Open("k").status().code() == absl::StatusCode::kUnauthenticated);
    REQUIRE((*client)->List().status().code() == absl::StatusCode::kUnauthenticated);
  }
  // The token never reaches the log.
  REQUIRE(daemon.Log().find(kTokenA) == std::string::npos);
  REQUIRE(daemon.Log().find("not-a-token") == std::string::npos);
  // sparsekvctl without a token is refused (exit 1), with the admin token it works.
  REQUIRE(daemon.Ctl("status").exit_code == 1);
  REQUIRE(daemon.Ctl(std::string("--token ") + kAdmin + " status").exit_code == 0);
}

TEST_CASE("security: tenants cannot see, open, delete or renew each other's regions", "[security]") {
  TempDir dir;
  DaemonFixture daemon({.extra_args = {"--tenants-file", WriteTenants(dir)}});
  auto a = As(daemon, kTokenA);
  auto b = As(daemon, kTokenB);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  auto ra = MakePatternRegion(**a, "shared-name", 2, 656, 100, 1, true);
  REQUIRE(ra.ok());
  // b: another tenant's key is NOT_FOUND, exactly as an absent one, and b may use the same name.
  auto open = (*b)->Open("shared-name");
  REQUIRE(open.status().code() == absl::StatusCode::kNotFound);
  auto absent = (*b)->Open("never-made");
  REQUIRE(absent.status().code() == absl::StatusCode::kNotFound);
  REQUIRE(std::string(open.status().message()).find("team-a") == std::string::npos);
  REQUIRE((*b)->Delete("shared-name").code() == absl::StatusCode::kNotFound);
  auto listed = (*b)->List();
  REQUIRE(listed.ok());
  REQUIRE(listed->empty());
  auto rb = MakePatternRegion(**b, "shared-name", 2, 656, 100, 2, true);
  REQUIRE(rb.ok());
  // Each sees its own bytes under the same name, and its own key without any prefix.
  REQUIRE(VerifyAllLayers(**ra, 1, {0, 50, 99}) == 0);
  REQUIRE(VerifyAllLayers(**rb, 2, {0, 50, 99}) == 0);
  auto mine = (*a)->List();
  REQUIRE(mine.ok());
  REQUIRE(mine->size() == 1);
  REQUIRE((*mine)[0].key == "shared-name");
  // Pool-wide operations need the admin role.
  REQUIRE((*a)->Stats().status().code() == absl::StatusCode::kPermissionDenied);
  // The admin sees both, as TENANT/KEY.
  auto admin = daemon.Ctl(std::string("--token ") + kAdmin + " regions");
  REQUIRE(admin.exit_code == 0);
  REQUIRE(admin.out.find("team-a/shared-name") != std::string::npos);
  REQUIRE(admin.out.find("team-b/shared-name") != std::string::npos);
  // a tenant's sparsekvctl sees its own regions only.
  auto own = daemon.Ctl(std::string("--token ") + kTokenB + " regions");
  REQUIRE(own.exit_code == 0);
  REQUIRE(own.out.find("team-a") == std::string::npos);
}

TEST_CASE("security: a quota overrun is RESOURCE_EXHAUSTED and leaves other tenants untouched", "[security]") {
  TempDir dir;
  DaemonFixture daemon({.pool_size = "64MiB", .extra_args = {"--tenants-file", WriteTenants(dir)}});
  auto a = As(daemon, kTokenA);
  auto b = As(daemon, kTokenB);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  auto rb = MakePatternRegion(**b, "b-data", 4, 656, 3000, 9, true);
  REQUIRE(rb.ok());
  // 8 MiB quota: 2 layers x 3000 tokens x 704 B = 4 MiB fits once (in 256 KiB pages) ...
  auto first = (*a)->Create({"a1", 2, 656, 3000, 0});
  REQUIRE(first.ok());
  auto second = (*a)->Create({"a2", 4, 656, 3000, 0});
  REQUIRE(second.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(std::string(second.status().message()).find("quota") != std::string::npos);
  // ... and growing past it is refused the same way.
  REQUIRE((*first)->Reserve(20000).code() == absl::StatusCode::kResourceExhausted);
  // Region count limit: 3.
  REQUIRE((*a)->Create({"a3", 1, 656, 1, 0}).ok());
  REQUIRE((*a)->Create({"a4", 1, 656, 1, 0}).ok());
  auto fifth = (*a)->Create({"a5", 1, 656, 1, 0});
  REQUIRE(fifth.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(std::string(fifth.status().message()).find("limit of 3 regions") != std::string::npos);
  // b is untouched and still has room.
  REQUIRE(VerifyAllLayers(**rb, 9, {0, 1234, 2999}) == 0);
  REQUIRE((*b)->Create({"b-more", 4, 656, 3000, 0}).ok());
}

TEST_CASE("security: eviction takes from the tenant that needs memory, others only above their guarantee", "[security]") {
  TempDir dir;
  // 16 MiB pool; b is guaranteed 8 MiB.
  std::string path = dir.path() + "/tenants.toml";
  std::ofstream(path) << "[tenants.team-a]\ntokens = [\"" << kTokenA << "\"]\n"
                      << "[tenants.team-b]\ntokens = [\"" << kTokenB << "\"]\nguarantee = \"8MiB\"\n";
  chmod(path.c_str(), 0600);
  DaemonFixture daemon({.pool_size = "16MiB", .extra_args = {"--tenants-file", path}});
  auto a = As(daemon, kTokenA);
  auto b = As(daemon, kTokenB);
  // b: 2 sealed regions of 4 MiB (its guarantee); a: 2 sealed regions of 4 MiB: the pool is full.
  for (int i = 0; i < 2; ++i) {
    auto r = MakePatternRegion(**b, "b" + std::to_string(i), 2, 656, 2900, 20 + i, true);
    REQUIRE(r.ok());
  }
  for (int i = 0; i < 2; ++i) {
    auto r = MakePatternRegion(**a, "a" + std::to_string(i), 2, 656, 2900, 30 + i, true);
    REQUIRE(r.ok());
  }
  // a needs 4 MiB more: its own least recently used region goes, b's guaranteed ones stay,
  // although b's are older.
  auto more = (*a)->Create({"a2", 2, 656, 2900, 0});
  INFO(more.status().ToString() << "\n" << daemon.Log());
  REQUIRE(more.ok());
  REQUIRE((*b)->Open("b0").ok());
  REQUIRE((*b)->Open("b1").ok());
  REQUIRE((*a)->Open("a0").status().code() == absl::StatusCode::kNotFound);
}

TEST_CASE("security: the tenants file is checked: readable by others, bad names, missing tokens", "[security][daemon]") {
  TempDir dir;
  std::string path = WriteTenants(dir);
  chmod(path.c_str(), 0644);
  auto open = RunCommand(SparsekvdPath() + " --pool-size 16MiB --listen 127.0.0.1:0 --metrics-listen '' --runtime-dir " +
                         dir.path() + " --tenants-file " + path);
  REQUIRE(open.exit_code == 1);
  REQUIRE(open.err.find("readable by others") != std::string::npos);
  std::ofstream(path) << "[tenants.\"bad/name\"]\ntokens = [\"0123456789abcdefgh\"]\n";
  chmod(path.c_str(), 0600);
  auto bad = RunCommand(SparsekvdPath() + " --pool-size 16MiB --listen 127.0.0.1:0 --metrics-listen '' --runtime-dir " +
                        dir.path() + " --tenants-file " + path);
  REQUIRE(bad.exit_code == 1);
  REQUIRE(bad.err.find("tenant name") != std::string::npos);
  REQUIRE(bad.err.find("0123456789abcdefgh") == std::string::npos);  // tokens never printed
}

TEST_CASE("security: a TLS-only daemon refuses plaintext, and mutual TLS refuses another CA's certificate", "[security][tls]") {
  TempDir dir;
  Pki good = MakePki(dir, "good");
  Pki other = MakePki(dir, "other");
  SECTION("TLS") {
    DaemonFixture daemon({.extra_args = {"--tls-cert", good.server_cert, "--tls-key", good.server_key,
                                         "--unix-socket", "none"}});
    auto plain = Client::Connect({.server = daemon.address(), .rpc_timeout_ms = 1500});
    REQUIRE(plain.status().code() == absl::StatusCode::kUnavailable);
    auto wrong_ca = Client::Connect({.server = daemon.address(), .rpc_timeout_ms = 1500, .tls_ca_file = other.ca});
    REQUIRE(wrong_ca.status().code() == absl::StatusCode::kUnavailable);
    auto tls = Client::Connect({.server = daemon.address(), .rpc_timeout_ms = 3000, .tls_ca_file = good.ca});
    REQUIRE(tls.ok());
    auto r = MakePatternRegion(**tls, "over-tls", 2, 656, 100, 3, true);
    REQUIRE(r.ok());
    REQUIRE(VerifyAllLayers(**r, 3, {0, 99}) == 0);
    REQUIRE(daemon.Ctl("--tls-ca " + good.ca + " status").exit_code == 0);
    REQUIRE(daemon.Ctl("status").exit_code == 3);
  }
  SECTION("mutual TLS") {
    DaemonFixture daemon({.extra_args = {"--tls-cert", good.server_cert, "--tls-key", good.server_key,
                                         "--tls-client-ca", good.ca, "--unix-socket", "none"}});
    auto no_cert = Client::Connect({.server = daemon.address(), .rpc_timeout_ms = 1500, .tls_ca_file = good.ca});
    bool refused = !no_cert.ok() || (*no_cert)->Create({"x", 1, 656, 1, 0}).status().code() == absl::StatusCode::kUnavailable;
    REQUIRE(refused);
    auto foreign = Client::Connect({.server = daemon.address(), .rpc_timeout_ms = 1500, .tls_ca_file = good.ca,
                                    .tls_cert_file = other.client_cert, .tls_key_file = other.client_key});
    refused = !foreign.ok() || (*foreign)->Create({"x", 1, 656, 1, 0}).status().code() == absl::StatusCode::kUnavailable;
    REQUIRE(refused);
    auto ok = Client::Connect({.server = daemon.address(), .rpc_timeout_ms = 3000, .tls_ca_file = good.ca,
                               .tls_cert_file = good.client_cert, .tls_key_file = good.client_key});
    REQUIRE(ok.ok());
    REQUIRE((*ok)->Create({"x", 1, 656, 1, 0}).ok());
  }
}

TEST_CASE("security: a plaintext control plane on a non-loopback address needs an explicit opt-in", "[security][daemon]") {
  TempDir dir;
  auto refused = RunCommand(SparsekvdPath() + " --pool-size 16MiB --listen 0.0.0.0:0 --metrics-listen '' --runtime-dir " +
                            dir.path());
  REQUIRE(refused.exit_code == 1);
  REQUIRE(refused.err.find("allow_plaintext_remote") != std::string::npos);
}

TEST_CASE("security: sparsekvctl tenants shows each tenant's use against its quota", "[security][ctl]") {
  TempDir dir;
  DaemonFixture daemon({.extra_args = {"--tenants-file", WriteTenants(dir)}});
  auto a = As(daemon, kTokenA);
  REQUIRE(a.ok());
  REQUIRE((*a)->Create({"one", 2, 656, 372, 0}).ok());  // 2 pages
  auto out = daemon.Ctl(std::string("--token ") + kAdmin + " --json tenants");
  REQUIRE(out.exit_code == 0);
  INFO(out.out);
  REQUIRE(out.out.find("{\"name\":\"team-a\",\"used_bytes\":524288,\"regions\":1,\"quota_bytes\":8388608,\"max_regions\":3") !=
          std::string::npos);
  REQUIRE(out.out.find("{\"name\":\"team-b\",\"used_bytes\":0,\"regions\":0") != std::string::npos);
  REQUIRE(daemon.Ctl(std::string("--token ") + kTokenA + " tenants").exit_code == 1);  // admin only
}

namespace {

// OpenRegion as a tenant over the raw control plane: the descriptors the client library gets.
v1::OpenRegionResponse RawOpen(const DaemonFixture& d, const std::string& token, const std::string& key) {
  auto stub = v1::Control::NewStub(grpc::CreateChannel(d.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", std::string("Bearer ") + token);
  v1::OpenRegionRequest req;
  req.set_key(key);
  v1::OpenRegionResponse reply;
  auto st = stub->OpenRegion(&ctx, req, &reply);
  REQUIRE(st.ok());
  return reply;
}

// Pool offset of token 0 of layer 0.
int64_t FirstEntryOffset(const v1::OpenRegionResponse& r) {
  return static_cast<int64_t>(r.layers(0).pages(0)) * r.info().geometry().page_bytes();
}

}  // namespace

TEST_CASE("security: the data-plane descriptors handed to a tenant reach its own arena only", "[security][fabric][tcp]") {
  TempDir dir;
  std::string path = dir.path() + "/tenants.toml";
  std::ofstream(path) << "[tenants.team-a]\ntokens = [\"" << kTokenA << "\"]\nquota = \"8MiB\"\nsocket_mode = \"0600\"\n"
                      << "[tenants.team-b]\ntokens = [\"" << kTokenB << "\"]\nquota = \"8MiB\"\n";
  chmod(path.c_str(), 0600);
  DaemonFixture daemon({.pool_size = "64MiB", .extra_args = {"--tenants-file", path}});
  auto a = As(daemon, kTokenA);
  auto b = As(daemon, kTokenB);
  REQUIRE(MakePatternRegion(**a, "mine", 2, 656, 500, 61, true).ok());
  REQUIRE(MakePatternRegion(**b, "theirs", 2, 656, 500, 62, true).ok());
  // Both work through the library on every path.
  for (const char* t : {"shm", "tcp", "fabric"}) {
    auto c = As(daemon, kTokenB, {.transport = t});
    auto r = (*c)->Open("theirs");
    REQUIRE(r.ok());
    REQUIRE(VerifyAllLayers(**r, 62, {0, 250, 499}) == 0);
  }
  const v1::OpenRegionResponse da = RawOpen(daemon, kTokenA, "mine");
  const v1::OpenRegionResponse db = RawOpen(daemon, kTokenB, "theirs");
  const int64_t a_entry = FirstEntryOffset(da), b_entry = FirstEntryOffset(db);
  const auto& ashm = da.transport().shm();
  INFO("a arena at " << ashm.arena_offset() << " +" << ashm.pool_bytes() << ", b entry at " << b_entry);
  REQUIRE(ashm.pool_bytes() == 8 << 20);
  REQUIRE(ashm.fd_socket_path() != db.transport().shm().fd_socket_path());
  REQUIRE(da.transport().fabric().key() != db.transport().fabric().key());
  REQUIRE(da.transport().gather_secret() != db.transport().gather_secret());

  SECTION("shm: the file handed to team-a holds team-a's arena and nothing else") {
    struct stat st {};
    REQUIRE(stat(ashm.fd_socket_path().c_str(), &st) == 0);
    REQUIRE((st.st_mode & 0777) == 0600);  // socket_mode from the tenants file
    auto received = ReceivePoolFd(ashm.fd_socket_path());
    REQUIRE(received.ok());
    REQUIRE(fstat(received->fd, &st) == 0);
    REQUIRE(st.st_size == ashm.pool_bytes());  // no byte of another arena is in this file
    REQUIRE((b_entry < ashm.arena_offset() || b_entry >= ashm.arena_offset() + ashm.pool_bytes()));
    // Its bytes are team-a's own: the entry the page table names is there.
    std::vector<std::byte> got(656), want(656);
    REQUIRE(pread(received->fd, got.data(), 656, a_entry - ashm.arena_offset()) == 656);
    FillEntry(61, 0, 0, 656, want.data());
    REQUIRE(got == want);
    close(received->fd);
  }
  SECTION("fabric: team-a's key reads team-a's arena and is refused on team-b's") {
    auto t = OpenFabricTransport(da.transport().fabric(), "127.0.0.1", 2000, false);
    REQUIRE(t.ok());
    std::vector<std::byte> got(656), want(656);
    std::vector<int64_t> mine = {a_entry};
    REQUIRE((*t)->Gather(mine, 656, got.data()).ok());
    FillEntry(61, 0, 0, 656, want.data());
    REQUIRE(got == want);
    std::vector<int64_t> theirs = {b_entry};
    std::fill(got.begin(), got.end(), std::byte{0});
    auto st = (*t)->Gather(theirs, 656, got.data());
    INFO(st.ToString());
    REQUIRE_FALSE(st.ok());
    FillEntry(62, 0, 0, 656, want.data());
    REQUIRE(got != want);
  }
  SECTION("tcp-gather: team-a's secret reads team-a's arena only; no secret reads nothing") {
    const auto& d = da.transport();
    TcpGatherTransport t(d.gather_host(), d.gather_port(), 2000, 1, d.gather_secret());
    std::vector<std::byte> got(656), want(656);
    std::vector<int64_t> mine = {a_entry}, theirs = {b_entry};
    REQUIRE(t.Gather(mine, 656, got.data()).ok());
    auto st = t.Gather(theirs, 656, got.data());
    REQUIRE(st.code() == absl::StatusCode::kInvalidArgument);
    REQUIRE(std::string(st.message()).find("outside the arena") != std::string::npos);
    TcpGatherTransport guess(d.gather_host(), d.gather_port(), 2000, 1, 0);
    REQUIRE(guess.Gather(theirs, 656, got.data()).code() == absl::StatusCode::kInvalidArgument);
    // Writes are held to the same arena.
    REQUIRE(t.Scatter(want.data(), 656, theirs).code() == absl::StatusCode::kInvalidArgument);
  }
  // team-b's bytes are intact after all of it.
  auto rb = (*b)->Open("theirs");
  REQUIRE(VerifyAllLayers(**rb, 62, {0, 1, 499}) == 0);
}

TEST_CASE("security: SIGHUP rotates tokens, and a changed quota (arena size) is refused until a restart", "[security][reload]") {
  TempDir dir;
  const std::string path = WriteTenants(dir);
  DaemonFixture daemon({.extra_args = {"--tenants-file", path}});
  auto old_a = As(daemon, kTokenA);
  REQUIRE((*old_a)->Create({"before", 1, 656, 10, 0}).ok());
  const std::string rotated = "tenant-a-rotated-secret-42";
  auto rewrite = [&](const std::string& token_a, const std::string& quota_a) {
    std::ofstream(path) << "[admin]\ntokens = [\"" << kAdmin << "\"]\n"
                        << "[tenants.team-a]\ntokens = [\"" << token_a << "\"]\nquota = \"" << quota_a << "\"\nmax_regions = 3\n"
                        << "[tenants.team-b]\ntokens = [\"" << kTokenB << "\"]\n";
  };
  auto hup = [&](const std::string& expect) {
    kill(daemon.pid(), SIGHUP);
    for (int i = 0; i < 50 && daemon.Log().find(expect) == std::string::npos; ++i) usleep(50000);
    INFO(daemon.Log());
    REQUIRE(daemon.Log().find(expect) != std::string::npos);
  };
  // A quota change is refused whole: the old token still works, the new one does not.
  rewrite(rotated, "16MiB");
  hup("quota (arena size) of team-a changed");
  REQUIRE((*old_a)->Open("before").ok());
  REQUIRE((*As(daemon, rotated))->Open("before").status().code() == absl::StatusCode::kUnauthenticated);
  // Rotating the token alone applies at once, to the same tenant and its regions.
  rewrite(rotated, "8MiB");
  hup("tenants reloaded");
  REQUIRE((*old_a)->Open("before").status().code() == absl::StatusCode::kUnauthenticated);
  auto new_a = As(daemon, rotated);
  REQUIRE((*new_a)->Open("before").ok());
  REQUIRE(daemon.Log().find(rotated) == std::string::npos);
}
