#include <doctest/doctest.h>

#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <thread>

#include "core/process.h"

#include "support.h"

using hbwatch::Liveness;

TEST_CASE("the calling process reads its own identity from /proc") {
    const auto self = hbwatch::self_identity();
    CHECK(self.pid == ::getpid());
    CHECK(self.start_time > 0);
    CHECK(hbwatch::self_identity() == self);  // stable
    CHECK(hbwatch::liveness(self) == Liveness::alive);
    auto stat = hbwatch::read_proc_stat(::getpid());
    REQUIRE(stat);
    CHECK(stat->ppid == ::getppid());
    CHECK(stat->rss_pages > 0);
}

TEST_CASE("a fork()ed child gets its own identity, not its parent's remembered one") {
    const auto parent = hbwatch::self_identity();
    hbtest::Pipe report;
    hbtest::Child child([&] {
        const auto mine = hbwatch::self_identity();
        const auto from_proc = hbwatch::identity_of(::getpid());
        const bool inode_differs = mine.pidfs_inode == 0 || mine.pidfs_inode != parent.pidfs_inode;
        const int ok = mine.pid == ::getpid() && from_proc && hbwatch::same_process(mine, *from_proc) &&
                       !hbwatch::same_process(parent, mine) && inode_differs;
        return ok ? 0 : 1;
    });
    CHECK(child.wait() == 0);
    CHECK(hbwatch::self_identity() == parent);
}

TEST_CASE("a process is told apart from a later holder of its pid by the start time") {
    const auto self = hbwatch::self_identity();
    CHECK(hbwatch::liveness({self.pid, self.start_time + 1}) == Liveness::reused);
    CHECK(hbwatch::liveness({self.pid, self.start_time - 1}) == Liveness::reused);
}

TEST_CASE("a zombie is not alive, and a reaped process is gone") {
    hbtest::Child child([] { return 0; });
    REQUIRE(child.wait_exit(std::chrono::seconds(10)));
    auto identity = hbwatch::identity_of(child.pid());
    REQUIRE(identity);
    CHECK(hbwatch::liveness(*identity) == Liveness::zombie);
    CHECK(hbwatch::read_proc_stat(child.pid())->state == 'Z');
    child.wait();
    CHECK(hbwatch::liveness(*identity) == Liveness::gone);
    CHECK_FALSE(hbwatch::identity_of(child.pid()));
}

TEST_CASE("a command name with spaces and parentheses does not confuse the /proc parser") {
    hbtest::Pipe ready;
    hbtest::Child child([&] {
        ::prctl(PR_SET_NAME, "a) (b c) 1 2", 0, 0, 0);
        char byte = 1;
        (void)!::write(ready.write_end(), &byte, 1);
        ::pause();
        return 0;
    });
    char byte;
    REQUIRE(::read(ready.read_end(), &byte, 1) == 1);
    std::optional<hbwatch::ProcStat> stat;
    // The child sleeps in pause() soon after writing; until then it may show as running.
    CHECK(hbtest::eventually([&] {
        stat = hbwatch::read_proc_stat(child.pid());
        return stat && stat->state == 'S';
    }));
    REQUIRE(stat);
    CHECK(stat->comm == "a) (b c) 1 2");
    CHECK(stat->ppid == ::getpid());
}

TEST_CASE("no process answers for pid 0, a negative pid or an unused pid") {
    CHECK_FALSE(hbwatch::read_proc_stat(0));
    CHECK_FALSE(hbwatch::read_proc_stat(-5));
    CHECK_FALSE(hbwatch::read_proc_stat(1 << 23));  // above PID_MAX_LIMIT: never a process
    CHECK(hbwatch::liveness({0, 1}) == Liveness::gone);
}

TEST_CASE("a process whose main thread has exited while another thread runs is alive, not a zombie") {
    hbtest::Pipe ready, finish;
    hbtest::Child child([&] {
        std::thread([&] {
            ready.signal();
            (void)finish.wait(std::chrono::seconds(30));
            ::_exit(0);
        }).detach();
        // The main thread alone ends (exit, not exit_group), without unwinding the stack
        // that the other thread still uses, as pthread_exit() would.
        ::syscall(SYS_exit, 0);
        return 0;
    });
    REQUIRE(ready.wait(std::chrono::seconds(10)));
    const auto who = hbwatch::identity_of(child.pid());
    REQUIRE(who);
    // /proc/PID/stat says Z for the main thread; the process still runs.
    auto stat = hbwatch::read_proc_stat(child.pid());
    for (int i = 0; i < 1000 && stat && stat->state != 'Z'; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));  // the main thread's exit has no event to wait on
        stat = hbwatch::read_proc_stat(child.pid());
    }
    REQUIRE(stat);
    REQUIRE(stat->state == 'Z');
    CHECK(hbwatch::liveness(*who) == hbwatch::Liveness::alive);
    CHECK(hbwatch::is_running(child.pid()));
    finish.signal();
    REQUIRE(child.wait_exit(std::chrono::seconds(10)));
    CHECK(hbwatch::liveness(*who) == hbwatch::Liveness::zombie);
    CHECK_FALSE(hbwatch::is_running(child.pid()));
}

TEST_CASE("/proc's lists and columns are read as the kernel writes them, and nothing past a word that is not a number") {
    using hbwatch::whole_numbers;
    CHECK(whole_numbers("12 345 6\n") == std::vector<std::uint64_t>{12, 345, 6});
    CHECK(whole_numbers("\t1000\t1000\t1000\t1000\n") == std::vector<std::uint64_t>{1000, 1000, 1000, 1000});
    CHECK(whole_numbers("7 -1 8") == std::vector<std::uint64_t>{7});
    CHECK(whole_numbers("7 8x 9") == std::vector<std::uint64_t>{7});
    CHECK(whole_numbers("99999999999999999999999") .empty());
    CHECK(whole_numbers("").empty());
    CHECK(hbwatch::lines_of("a\nb c\n\nd") == std::vector<std::string_view>{"a", "b c", "", "d"});
    CHECK(hbwatch::lines_of("a\n") == std::vector<std::string_view>{"a"});
    const auto maps = hbwatch::leading_words("7f00-7f01 rw-s 00000000 00:01 1234   /memfd:hb x (deleted)", 5);
    REQUIRE(maps.size() == 6);
    CHECK(maps[0] == "7f00-7f01");
    CHECK(maps[4] == "1234");
    CHECK(maps[5] == "/memfd:hb x (deleted)");
    CHECK(hbwatch::leading_words("  a  b ", 5) == std::vector<std::string_view>{"a", "b"});
}
