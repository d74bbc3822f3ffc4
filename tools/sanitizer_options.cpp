// Default sanitizer options, compiled into every executable of a -DBATV_SANITIZE=ON build, so the
// same strict settings hold under ctest, tools/test and a binary run by hand (ASAN_OPTIONS /
// UBSAN_OPTIONS in the environment still override single flags).
//
// Every finding ends the process with SIGABRT (abort_on_error), also the leak check at exit: an
// exit code a test could mistake for the program's own "1" never happens, and the report is on
// stderr, where the Python tests look for it (tests/e2e/harness.py sanitizer_findings).

extern "C" {

// NOLINTNEXTLINE: the sanitizer runtimes look these names up.
const char* __asan_default_options();
const char* __ubsan_default_options();

const char* __asan_default_options() {
  return "abort_on_error=1:halt_on_error=1:detect_leaks=1:check_initialization_order=1:"
         "strict_init_order=1:detect_stack_use_after_return=1:strict_string_checks=1:"
         "print_summary=1";
}

const char* __ubsan_default_options() {
  return "abort_on_error=1:halt_on_error=1:print_stacktrace=1:print_summary=1";
}

}  // extern "C"
