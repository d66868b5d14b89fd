// sparsekvd: the sparsekv memory-pool daemon (see server/daemon.h for its start-up steps).
#include "server/daemon.h"

int main(int argc, char** argv) { return sparsekv::Daemon::Main(argc, argv); }
