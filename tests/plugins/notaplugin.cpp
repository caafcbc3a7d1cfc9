// A shared object without SILO_PLUGIN(): silod must refuse it with a clear reason.
extern "C" int not_a_silo_plugin() {
  return 42;
}
