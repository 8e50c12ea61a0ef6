// The output files procctl writes (rotation between lines, full disks, planted links) and
// reads back (tail, follow across rotations), in-process on real files.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <hbwatch/error.h>

#include "support.h"
#include "engine/output.h"

using namespace std::chrono_literals;
using namespace std::string_literals;
using hbwatch::tool::OutputFile;
namespace fs = std::filesystem;

namespace {


struct Scratch {
    fs::path dir;
    Scratch() {
        char buffer[] = "/tmp/hbwatch-output-XXXXXX";
        dir = ::mkdtemp(buffer);
    }
    ~Scratch() {
        ::umount2(dir.c_str(), MNT_DETACH);
        fs::remove_all(dir);
    }
    std::string file(const std::string& name) const { return (dir / name).string(); }
};

std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

struct Reports {
    std::vector<std::string> lines;
    int droppings = 0;  // lines that began a stretch of dropped output
    OutputFile::Report sink() {
        return [this](const std::string& line, bool dropping) {
            lines.push_back(line);
            if (dropping) ++droppings;
        };
    }
};

}  // namespace

TEST_CASE("output passes byte for byte, and a 1 MiB line is never cut or given a newline") {
    Scratch scratch;
    Reports reports;
    std::string expected;
    {
        OutputFile file(scratch.file("out"), 10u << 20, 3, reports.sink());
        const std::string line(1 << 20, 'x');
        for (std::size_t i = 0; i < line.size(); i += 4000) {  // as a pipe delivers it: in pieces
            file.write(std::string_view(line).substr(i, 4000));
        }
        file.write("\n{\"a\":1}\nno newline at the end");
        expected = line + "\n{\"a\":1}\nno newline at the end";
    }
    CHECK(read_file(scratch.file("out")) == expected);
    CHECK(reports.lines.empty());
}

TEST_CASE("rotation happens between lines: no line that fits the cap is ever split") {
    Scratch scratch;
    Reports reports;
    {
        OutputFile file(scratch.file("svc.out"), 100, 5, reports.sink());
        for (int i = 0; i < 20; ++i) file.write("line " + std::to_string(i) + " of the output, 31 bytes\n"s.substr(0, 31));
    }
    std::string all;
    for (int index = 5; index >= 1; --index) {
        const auto name = scratch.file("svc." + std::to_string(index) + ".out");
        if (!fs::exists(name)) continue;
        const auto text = read_file(name);
        CHECK(text.size() <= 100);
        CHECK(text.back() == '\n');  // every file ends with a whole line
        all += text;
    }
    all += read_file(scratch.file("svc.out"));
    CHECK(all.find("line 19 of the output") != std::string::npos);
    CHECK_FALSE(fs::exists(scratch.file("svc.6.out")));
}

TEST_CASE("a full device drops output, says so once with the path and errno, and never throws") {
    Reports reports;
    OutputFile file("/dev/full", 4096, 3, reports.sink());
    for (int i = 0; i < 100; ++i) file.write("a line that cannot be written\n");
    file.finish();
    REQUIRE(reports.lines.size() == 1);
    CHECK(reports.lines[0] == "cannot write /dev/full: No space left on device; dropping output (supervision goes on) "
                              "until it can be written");
    CHECK(reports.droppings == 1);  // the line that procctl turns into an output_dropped event
    CHECK(file.dropped_bytes() == 100 * 30);
}

TEST_CASE("a full tmpfs drops output, then writes again once space is freed, counting what was lost") {
    if (::geteuid() != 0) {
        MESSAGE("SKIPPED: needs root (to mount a tiny tmpfs)");
        return;
    }
    Scratch scratch;
    REQUIRE(::mount("tmpfs", scratch.dir.c_str(), "tmpfs", 0, "size=64k") == 0);
    { std::ofstream(scratch.file("ballast")) << std::string(64 * 1024, 'b'); }
    Reports reports;
    OutputFile file(scratch.file("out"), 1u << 20, 2, reports.sink());
    const std::string chunk(1000, 'y');
    for (int i = 0; i < 10; ++i) file.write(chunk + "\n");
    REQUIRE(reports.lines.size() == 1);
    CHECK(reports.lines[0].starts_with("cannot write " + scratch.file("out") + ": No space left on device"));
    fs::remove(scratch.file("ballast"));
    file.write("after\n");
    REQUIRE(reports.lines.size() == 2);
    CHECK(reports.lines[1].starts_with("writing " + scratch.file("out") + " again; "));
    CHECK(reports.lines[1].ends_with("of output were dropped meanwhile"));
    CHECK(reports.droppings == 1);  // the recovery begins no new stretch
    CHECK(read_file(scratch.file("out")).ends_with("after\n"));
}

TEST_CASE("a directory planted where rotation renames to: reported, and writing goes on past the cap") {
    Scratch scratch;
    fs::create_directory(scratch.file("svc.1.out"));
    fs::create_directory(scratch.file("svc.1.out") + "/occupied");
    Reports reports;
    {
        OutputFile file(scratch.file("svc.out"), 64, 3, reports.sink());
        for (int i = 0; i < 10; ++i) file.write("twenty bytes a line\n");
    }
    REQUIRE_FALSE(reports.lines.empty());
    CHECK(reports.lines[0] == "cannot rotate " + scratch.file("svc.out") + ": " + scratch.file("svc.1.out") +
                                  " is not a regular file (planted there?); writing on past the cap");
    CHECK(reports.lines.size() == 1);  // once, not at every cap
    CHECK(read_file(scratch.file("svc.out")).size() == 200);  // nothing lost
}

TEST_CASE("files are never opened through a symbolic link, in a missing directory, or in another user's directory") {
    Scratch scratch;
    { std::ofstream(scratch.file("victim")) << "precious"; }
    fs::create_symlink(scratch.file("victim"), scratch.file("link"));
    Reports reports;
    CHECK(hbtest::error_of([&] { OutputFile file(scratch.file("link"), 0, 1, reports.sink()); }) ==
          "cannot open " + scratch.file("link") + ": it is a symbolic link, which procctl never follows");
    CHECK(read_file(scratch.file("victim")) == "precious");
    CHECK(hbtest::error_of([&] { OutputFile file(scratch.file("none/out"), 0, 1, reports.sink()); }) ==
          "cannot open " + scratch.file("none/out") + ": its directory " + scratch.file("none") +
              " does not exist (procctl never creates directories)");
    CHECK_FALSE(fs::exists(scratch.file("none")));
    if (::geteuid() == 0) {
        // A link planted by another user in a sticky directory, as in /tmp.
        fs::permissions(scratch.dir, fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
        fs::create_directory(scratch.file("sticky"));
        fs::permissions(scratch.file("sticky"), fs::perms::all | fs::perms::sticky_bit);
        const auto planted = hbtest::as_nobody(65534, [&] {
            return ::symlink(scratch.file("victim").c_str(), scratch.file("sticky/out").c_str()) == 0 ? std::string("planted")
                                                                                                   : std::string("not planted");
        });
        REQUIRE(planted == "planted");
        CHECK(hbtest::error_of([&] { OutputFile file(scratch.file("sticky/out"), 0, 1, reports.sink()); }) ==
              "cannot open " + scratch.file("sticky/out") + ": it is a symbolic link, which procctl never follows");
        CHECK(read_file(scratch.file("victim")) == "precious");
        // A directory link planted by another user, in a sticky directory: never followed.
        fs::create_directory(scratch.file("rootdir"));
        REQUIRE(hbtest::as_nobody(65534, [&] {
                    return std::to_string(::symlink(scratch.file("rootdir").c_str(), scratch.file("sticky/svc").c_str()));
                }) == "0");
        CHECK(hbtest::error_of([&] { OutputFile file(scratch.file("sticky/svc/app.log"), 0, 1, reports.sink()); }) ==
              "cannot open " + scratch.file("sticky/svc/app.log") + ": " + scratch.file("sticky/svc") +
                  " is a symbolic link owned by uid 65534, which procctl does not follow");
        CHECK(fs::is_empty(scratch.file("rootdir")));
        // A sticky directory that another user owns: its owner may rename anything in it.
        REQUIRE(hbtest::as_nobody(65534, [&] {
                    return std::to_string(::mkdir(scratch.file("sticky/theirs").c_str(), 01777));
                }) == "0");
        CHECK(hbtest::error_of([&] { OutputFile file(scratch.file("sticky/theirs/out"), 0, 1, reports.sink()); }) ==
              "cannot open " + scratch.file("sticky/theirs/out") + ": the directory " + scratch.file("sticky/theirs") +
                  " belongs to uid 65534, who could swap what is in it; use a directory that only root or you own");
        // A FIFO planted where the output goes: refused at once, never blocking on it.
        REQUIRE(hbtest::as_nobody(65534, [&] {
                    return std::to_string(::mkfifo(scratch.file("sticky/out.fifo").c_str(), 0666));
                }) == "0");
        CHECK(hbtest::error_of([&] { OutputFile file(scratch.file("sticky/out.fifo"), 0, 1, reports.sink()); }) ==
              "cannot open " + scratch.file("sticky/out.fifo") + ": it is a FIFO or socket, where only files and devices "
                                                                  "are written");
        fs::create_directory(scratch.file("theirs"));
        REQUIRE(::chown(scratch.file("theirs").c_str(), 65534, 65534) == 0);
        CHECK(hbtest::error_of([&] { OutputFile file(scratch.file("theirs/out"), 0, 1, reports.sink()); }) ==
              "cannot open " + scratch.file("theirs/out") + ": the directory " + scratch.file("theirs") +
                  " belongs to uid 65534, who could swap what is in it; use a directory that only root or you own");
        { std::ofstream(scratch.file("foreign")) << "x"; }
        REQUIRE(::chown(scratch.file("foreign").c_str(), 65534, 65534) == 0);
        CHECK(hbtest::error_of([&] { OutputFile file(scratch.file("foreign"), 0, 1, reports.sink()); }) ==
              "cannot open " + scratch.file("foreign") +
                  ": it is owned by uid 65534, not by procctl's user (uid 0); remove it or use another file");
    }
}

TEST_CASE("a directory swapped for a link after the file was opened is not followed by rotation") {
    Scratch scratch;
    fs::create_directory(scratch.file("logs"));
    fs::create_directory(scratch.file("elsewhere"));
    Reports reports;
    OutputFile file(scratch.file("logs/svc.out"), 64, 3, reports.sink());
    file.write("the first line, before the swap\n");
    fs::rename(scratch.file("logs"), scratch.file("logs.old"));
    fs::create_directory_symlink(scratch.file("elsewhere"), scratch.file("logs"));
    for (int i = 0; i < 10; ++i) file.write("twenty bytes a line\n");  // rotates several times
    CHECK(fs::is_empty(scratch.file("elsewhere")));
    CHECK(fs::exists(scratch.file("logs.old/svc.1.out")));
    CHECK(reports.lines.empty());
}

TEST_CASE("an output file's tail and what follows a cursor: across one rotation whole, past two with a gap said") {
    Scratch scratch;
    Reports reports;
    OutputFile file(scratch.file("svc.out"), 100, 3, reports.sink());
    auto line = [](int i) { return "line " + std::to_string(i); };  // 7 or 8 bytes with its newline
    CHECK(file.tail(10, 1 << 20).lines.empty());
    for (int i = 1; i <= 5; ++i) file.write(line(i) + "\n");
    file.write("partial, no newline yet");  // held until its newline: never shown
    auto tail = file.tail(3, 1 << 20);
    CHECK(tail.lines == std::vector<std::string>{line(3), line(4), line(5)});
    CHECK(file.tail(0, 1 << 20).lines.empty());
    CHECK(file.tail(2, 16).lines == std::vector<std::string>{line(4), line(5)});  // a byte budget cuts at a line's start
    file.write("\n");

    // Lines 6..20 push the file past 100 bytes once: the follower gets every line, in order.
    auto cursor = tail.next;
    for (int i = 6; i <= 20; ++i) file.write(line(i) + "\n");
    REQUIRE(fs::exists(scratch.file("svc.1.out")));
    auto next = file.follow(cursor, 1 << 20);
    CHECK_FALSE(next.skipped);
    std::vector<std::string> expected{"partial, no newline yet"};
    for (int i = 6; i <= 20; ++i) expected.push_back(line(i));
    CHECK(next.lines == expected);
    CHECK(file.follow(next.next, 1 << 20).lines.empty());  // nothing new

    // A budget: what does not fit comes with the next call.
    cursor = next.next;
    for (int i = 21; i <= 24; ++i) file.write(line(i) + "\n");
    next = file.follow(cursor, 20);
    CHECK(next.lines == std::vector<std::string>{line(21), line(22)});
    next = file.follow(next.next, 1 << 20);
    CHECK(next.lines == std::vector<std::string>{line(23), line(24)});

    // Rotated past every kept file since the cursor: what is still on disk, from the oldest kept
    // file on, and `skipped` says lines were lost.
    cursor = next.next;
    for (int i = 25; i <= 100; ++i) file.write(line(i) + "\n");
    next = file.follow(cursor, 1 << 20);
    CHECK(next.skipped);
    REQUIRE_FALSE(next.lines.empty());
    CHECK(next.lines.front() != line(25));
    CHECK(next.lines.back() == line(100));
    for (std::size_t i = 1; i < next.lines.size(); ++i)
        CHECK(std::stoi(next.lines[i].substr(5)) == std::stoi(next.lines[i - 1].substr(5)) + 1);

    // The tail reaches into the rotated files when the current one holds fewer lines.
    auto last = file.tail(20, 1 << 20);
    REQUIRE(last.lines.size() == 20);
    CHECK(last.lines.front() == line(81));
    CHECK(last.lines.back() == line(100));
}

TEST_CASE("a follower whose file was rotated several times gets every line kept, a cut line whole, and tail 0 a cursor") {
    Scratch scratch;
    Reports reports;
    OutputFile file(scratch.file("svc.out"), 100, 5, reports.sink());
    auto line = [](int i) { return "line " + std::to_string(i); };
    file.write("before\n");
    const auto none = file.tail(0, 1 << 20);
    CHECK(none.lines.empty());
    CHECK(file.follow(none.next, 1 << 20).lines.empty());  // the cursor is at the end, not at 0
    // A line longer than the cap is cut across files; then enough lines to rotate four times.
    file.write(std::string(150, 'x') + "\n");
    for (int i = 1; i <= 30; ++i) file.write(line(i) + "\n");
    REQUIRE(fs::exists(scratch.file("svc.3.out")));
    const auto next = file.follow(none.next, 1 << 20);
    CHECK_FALSE(next.skipped);
    std::string long_line;
    std::size_t at = 0;
    while (at < next.lines.size() && next.lines[at].find_first_not_of('x') == std::string::npos) long_line += next.lines[at++];
    CHECK(long_line == std::string(150, 'x'));
    std::vector<std::string> rest(next.lines.begin() + static_cast<std::ptrdiff_t>(at), next.lines.end());
    std::vector<std::string> expected;
    for (int i = 1; i <= 30; ++i) expected.push_back(line(i));
    CHECK(rest == expected);
    // A planted file of another user is never read as a rotated one.
    if (::geteuid() == 0) {
        fs::remove(scratch.file("svc.1.out"));
        std::ofstream(scratch.file("svc.1.out")) << "forged\n";
        REQUIRE(::chown(scratch.file("svc.1.out").c_str(), 65534, 65534) == 0);
        for (const auto& text : file.tail(100, 1 << 20).lines) CHECK(text != "forged");
    }
}

TEST_CASE("a line that never ends is held at most kMaxHeldLine, whatever the cap: the rest is written as it comes") {
    Scratch scratch;
    Reports reports;
    for (const std::uint64_t cap : {std::uint64_t{0}, std::uint64_t{1} << 40}) {  // 0 never rotates
        const std::string path = scratch.file("endless-" + std::to_string(cap));
        OutputFile file(path, cap, 2, reports.sink());
        const std::string chunk(4000, 'z');
        std::size_t written = 0;
        for (; written < (1u << 20); written += chunk.size()) file.write(chunk);
        // Before finish(): on disk already, but for at most one held piece.
        const auto on_disk = std::filesystem::file_size(path);
        CHECK(on_disk + hbwatch::tool::kMaxHeldLine >= written);
        CHECK(on_disk <= written);
        file.finish();
        CHECK(std::filesystem::file_size(path) == written);
    }
    CHECK(reports.lines.empty());
}

TEST_CASE("output without newlines costs time in proportion to its size, not to its square") {
    Scratch scratch;
    Reports reports;
    OutputFile file(scratch.file("flood"), std::uint64_t{1} << 40, 2, reports.sink());
    const std::string chunk(64 * 1024, '\0');
    timespec start{}, end{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start);
    for (int i = 0; i < 1024; ++i) file.write(chunk);  // 64 MiB, no newline
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &end);
    const double seconds = double(end.tv_sec - start.tv_sec) + double(end.tv_nsec - start.tv_nsec) / 1e9;
    // Linear: about 0.05 s of CPU here. Rescanning what is held at every write took over 10 s.
    CHECK_MESSAGE(seconds < 5.0, seconds << " s of CPU for 64 MiB");
    file.finish();
    CHECK(std::filesystem::file_size(scratch.file("flood")) == (64u << 20));
}

TEST_CASE("a held line longer than a cap that a reload lowered is written out as it was, and nothing else with it") {
    Scratch scratch;
    Reports reports;
    const std::string path = scratch.file("lowered");
    std::string expected;
    {
        OutputFile file(path, 10u << 20, 100, reports.sink());
        const std::string held(3000, 'A');
        file.write(held);  // held: no newline yet
        file.set_limits(1024, 100);  // a reload lowers log_max_size below what is held
        for (int i = 0; i < 5; ++i) file.write("B");
        file.write("\n");
        expected = held + "BBBBB\n";
    }
    // Every byte written, in order, across the current file and the rotated ones; no other byte
    // (the held line's length once wrapped an unsigned subtraction, and memory before the
    // caller's buffer was written out).
    std::string all;
    for (std::size_t i = 100; i >= 1; --i)
        if (fs::exists(hbwatch::tool::rotated_name(path, i))) all += read_file(hbwatch::tool::rotated_name(path, i));
    all += read_file(path);
    CHECK(all == expected);
    CHECK(reports.lines.empty());
}
