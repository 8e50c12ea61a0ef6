// Takes MIB mebibytes of memory, touched so that it is resident, then sleeps until killed.
//     grow MIB
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

int main(int argc, char** argv) {
    const std::size_t bytes = static_cast<std::size_t>(argc > 1 ? std::atoi(argv[1]) : 64) << 20;
    std::vector<char> memory(bytes);
    std::memset(memory.data(), 1, bytes);
    for (;;) ::pause();
}
