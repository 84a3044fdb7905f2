// Test tooling only: register a no-op "Ascend" device init with MindSpore's context so a
// semi-auto parallel graph can be compiled (not run) on a CPU-only machine. Private hook of
// MindSpore 2.10 (mindspore::MsContext::RegisterInitFunc); it may change in other versions.
// Built by tests/tools/dryrun.py: g++ -shared -fPIC -D_GLIBCXX_USE_CXX11_ABI=0 ...
#include <string>

namespace mindspore {
class MsContext {
 public:
  using InitDeviceTargetAndPolicy = void (*)(MsContext *);
  static void RegisterInitFunc(const std::string &name, InitDeviceTargetAndPolicy func);
};
}  // namespace mindspore

namespace {
void NoopInit(mindspore::MsContext *) {}
struct Register {
  Register() { mindspore::MsContext::RegisterInitFunc("Ascend", NoopInit); }
} g_register;
}  // namespace
