#include "common/grpc_tls.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"

namespace sparsekv {
absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrFormat("%s '%s': %s", what, path, std::strerror(errno)));
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrFormat("%s '%s' is not PEM", what, path));
  }
  return text.str();
}

namespace {

void FromEnv(std::string* field, const char* name) {
  if (!field->empty()) return;
  if (const char* v = std::getenv(name)) *field = v;
}

}  // namespace

ControlPlaneSecurity WithEnvironment(ControlPlaneSecurity s) {
  FromEnv(&s.token, "SPARSEKV_TOKEN");
  FromEnv(&s.ca_file, "SPARSEKV_TLS_CA");
  FromEnv(&s.cert_file, "SPARSEKV_TLS_CERT");
  FromEnv(&s.key_file, "SPARSEKV_TLS_KEY");
  return s;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentialsFor(const ControlPlaneSecurity& s) {
  if (s.ca_file.empty()) {
    if (!s.cert_file.empty()) {
      return absl::InvalidArgumentError("a client certificate needs TLS: also give the CA of the daemon's certificate");
    }
    return grpc::InsecureChannelCredentials();
  }
  if (s.cert_file.empty() != s.key_file.empty()) {
    return absl::InvalidArgumentError("the client certificate and its key go together: give both or neither");
  }
  grpc::SslCredentialsOptions options;
  auto ca = ReadPem(s.ca_file, "TLS CA");
  if (!ca.ok()) return ca.status();
  options.pem_root_certs = *ca;
  if (!s.cert_file.empty()) {
    auto cert = ReadPem(s.cert_file, "TLS client certificate");
    if (!cert.ok()) return cert.status();
    auto key = ReadPem(s.key_file, "TLS client key");
    if (!key.ok()) return key.status();
    options.pem_cert_chain = *cert;
    options.pem_private_key = *key;
  }
  return grpc::SslCredentials(options);
}

}  // namespace sparsekv
