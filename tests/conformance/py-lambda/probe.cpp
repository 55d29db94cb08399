// Built by tests/tests/e2e/conformance.rs into lib/libfaasprobe.so: a native
// library that links libstdc++, as numpy's and most scientific wheels do.
#include <string>

extern "C" int probe_length(const char *text) {
    std::string s(text);
    s += s;  // std::string's allocation: libstdc++ at work
    return static_cast<int>(s.size() / 2);
}
