#include "server/auth.h"

#include <sys/stat.h>

#include <toml++/toml.h>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "common/size_parse.h"

namespace sparsekv {

bool ValidTenantName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-')) return false;
  }
  return true;
}

namespace {

absl::StatusOr<int64_t> SizeField(const toml::table& t, const char* key, const std::string& where) {
  const toml::node* n = t.get(key);
  if (n == nullptr) return 0;
  if (auto i = n->value<int64_t>(); i && n->is_integer()) return *i;
  if (auto s = n->value<std::string>()) {
    auto parsed = ParseSize(*s);
    if (!parsed.ok()) return absl::InvalidArgumentError(absl::StrFormat("%s.%s: %s", where, key, parsed.status().message()));
    return *parsed;
  }
  return absl::InvalidArgumentError(absl::StrFormat("%s.%s must be a size like \"8GiB\"", where, key));
}

absl::Status AddTokens(const toml::table& t, const std::string& where, const Caller& caller,
                       std::map<std::string, Caller>* callers) {
  const toml::array* tokens = t.get_as<toml::array>("tokens");
  if (tokens == nullptr || tokens->empty()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s.tokens: a list of at least one token is required", where));
  }
  for (const auto& node : *tokens) {
    auto token = node.value<std::string>();
    if (!token || token->size() < 16) {
      return absl::InvalidArgumentError(absl::StrFormat("%s.tokens: every token must be a string of at least 16 characters", where));
    }
    if (!callers->emplace(*token, caller).second) {
      return absl::InvalidArgumentError(absl::StrFormat("%s.tokens: a token is used twice in the file", where));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TenantDirectory> TenantDirectory::Load(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrFormat("auth.tenants_file '%s': %s", path, std::strerror(errno)));
  }
  if (st.st_mode & S_IROTH) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "auth.tenants_file '%s' holds bearer tokens but is readable by others (mode %04o); chmod 0600 or 0640 it",
        path, st.st_mode & 07777));
  }
  toml::table root;
  try {
    root = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError(absl::StrFormat("auth.tenants_file '%s': %s (line %d)", path,
                                                      std::string(e.description()), e.source().begin.line));
  }
  TenantDirectory dir;
  for (const auto& [key, node] : root) {
    const std::string section(key.str());
    if (section != "tenants" && section != "admin") {
      return absl::InvalidArgumentError(absl::StrFormat("auth.tenants_file '%s': unknown section [%s]", path, section));
    }
  }
  if (const toml::table* admin = root.get_as<toml::table>("admin")) {
    if (auto s = AddTokens(*admin, "admin", Caller{"", true}, &dir.callers_); !s.ok()) return s;
  }
  if (const toml::table* tenants = root.get_as<toml::table>("tenants")) {
    for (const auto& [key, node] : *tenants) {
      const std::string name(key.str());
      const std::string where = "tenants." + name;
      if (!ValidTenantName(name)) {
        return absl::InvalidArgumentError(absl::StrFormat("%s: a tenant name is 1-64 of [A-Za-z0-9_.-]", where));
      }
      const toml::table* t = node.as_table();
      if (t == nullptr) return absl::InvalidArgumentError(absl::StrFormat("%s must be a table", where));
      for (const auto& [field, value] : *t) {
        const std::string f(field.str());
        if (f != "tokens" && f != "quota" && f != "max_regions" && f != "guarantee" && f != "socket_mode" &&
            f != "socket_group") {
          return absl::InvalidArgumentError(absl::StrFormat("%s.%s: unknown key", where, f));
        }
      }
      if (auto s = AddTokens(*t, where, Caller{name, false}, &dir.callers_); !s.ok()) return s;
      TenantPolicy p;
      auto quota = SizeField(*t, "quota", where);
      if (!quota.ok()) return quota.status();
      auto guarantee = SizeField(*t, "guarantee", where);
      if (!guarantee.ok()) return guarantee.status();
      p.quota_bytes = *quota;
      p.guarantee_bytes = *guarantee;
      p.max_regions = t->get("max_regions") ? t->get("max_regions")->value_or<int64_t>(-1) : 0;
      if (p.max_regions < 0 || p.quota_bytes < 0 || p.guarantee_bytes < 0) {
        return absl::InvalidArgumentError(absl::StrFormat("%s: quota, guarantee and max_regions must be >= 0", where));
      }
      if (p.quota_bytes > 0 && p.guarantee_bytes > p.quota_bytes) {
        return absl::InvalidArgumentError(absl::StrFormat("%s: guarantee is larger than quota", where));
      }
      if (const toml::node* m = t->get("socket_mode")) {
        auto text = m->value<std::string>();
        char* end = nullptr;
        long mode = text ? std::strtol(text->c_str(), &end, 8) : -1;
        if (!text || end == text->c_str() || *end != '\0' || mode < 0 || mode > 0777) {
          return absl::InvalidArgumentError(absl::StrFormat("%s.socket_mode must be an octal string like \"0660\"", where));
        }
        p.socket_mode = static_cast<int>(mode);
      }
      if (const toml::node* g = t->get("socket_group")) p.socket_group = g->value_or<std::string>("");
      dir.policies_[name] = p;
    }
  }
  if (dir.callers_.empty()) {
    return absl::InvalidArgumentError(absl::StrFormat("auth.tenants_file '%s' defines no tokens", path));
  }
  return dir;
}

absl::StatusOr<Caller> TenantDirectory::Authenticate(const std::string& header) const {
  if (header.empty()) {
    return absl::UnauthenticatedError("this daemon requires a bearer token (authorization: Bearer TOKEN)");
  }
  if (!absl::StartsWith(header, "Bearer ")) {
    return absl::UnauthenticatedError("the authorization header is not 'Bearer TOKEN'");
  }
  auto it = callers_.find(header.substr(7));
  if (it == callers_.end()) return absl::UnauthenticatedError("unknown bearer token");
  return it->second;
}

}  // namespace sparsekv
