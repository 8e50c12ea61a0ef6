// The network view on real clients: curl over TCP and TLS (a certificate made by openssl in
// the test), the tokens file's rules, promtool on /metrics, the real Prometheus server scraping
// procctl, headless Chromium rendering the status page, the port endpoints and proctab kill
// --port on real listeners, and a flood of unauthenticated clients beside a restart.
#include <doctest/doctest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <atomic>
#include <chrono>
#include <fstream>
#include <map>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine/control.h"
#include "engine/http_config.h"
#include "engine/tokens.h"
#include "core/table.h"
#include "stack_support.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using hbtest::Process;
using namespace hbtest::stack;
using hbwatch::tool::Role;
using hbwatch::tool::TokenBook;

namespace {

const std::string kAdmin = "adm1n-0123456789abcdef0123456789";
const std::string kViewer = "v1ewer-0123456789abcdef012345678";

void write_tokens(const fs::path& path) {
    std::ofstream(path) << "# NAME ROLE TOKEN\n"
                        << "admin operate " << kAdmin << "\n"
                        << "viewer read " << kViewer << "  # dashboards\n";
    fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
}

struct Answer {
    int status = 0;  // HTTP status; 0 when curl got none
    std::string body;
    int curl_exit = 0;
};

// curl, a real client: the status and the body.
Answer curl(std::vector<std::string> args) {
    args.insert(args.begin(), {"curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}"});
    int code = 0;
    std::string out;
    std::tie(code, out) = run(args);
    Answer answer;
    answer.curl_exit = code;
    const auto newline = out.rfind('\n');
    if (newline != std::string::npos) {
        answer.status = std::atoi(out.c_str() + newline + 1);
        answer.body = out.substr(0, newline);
    } else {
        answer.body = out;
    }
    return answer;
}

std::vector<std::string> bearer(const std::string& token) { return {"-H", "Authorization: Bearer " + token}; }

// procctl --config with an http section on a free loopback port (and [::1] when `ipv6`), the
// tokens above, and `programs` (YAML lines under `programs:`).
struct HttpStack {
    Scratch dir;
    int port = hbtest::free_port();
    fs::path tokens = dir.dir / "tokens";
    std::string extra_http;
    std::unique_ptr<Process> procctl;

    explicit HttpStack(const std::string& programs, const std::string& http_lines = "", bool ipv6 = false) {
        write_tokens(tokens);
        std::ofstream(dir.dir / "stack.yaml") << "run_dir: " << (dir.dir / "run").string() << "\n"
                                              << "log_dir: " << (dir.dir / "log").string() << "\n"
                                              << "http:\n"
                                              << "  listen: [127.0.0.1:" << port << (ipv6 ? ", \"[::1]:" + std::to_string(port) + "\"" : "")
                                              << "]\n"
                                              << "  tokens_file: " << tokens.string() << "\n"
                                              << http_lines << "programs:\n"
                                              << programs;
        procctl = std::make_unique<Process>(std::vector<std::string>{hbtest::bin("procctl"), "-f", "-c", (dir.dir / "stack.yaml").string()});
        REQUIRE_MESSAGE(procctl->wait_for_output("running the stack", 30s), procctl->output_so_far());
    }
    ~HttpStack() {
        if (procctl && procctl->running()) {
            ::kill(procctl->pid(), SIGTERM);
            CHECK_MESSAGE(procctl->wait_exit(30s), "procctl did not stop on SIGTERM");
        }
    }
    [[nodiscard]] std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port) + path; }
    [[nodiscard]] fs::path socket() const { return dir.dir / "run" / "control.sock"; }
    Answer get(const std::string& path, const std::string& token) const {
        auto args = token.empty() ? std::vector<std::string>{} : bearer(token);
        args.push_back(url(path));
        return curl(args);
    }
    Answer post(const std::string& path, const std::string& token) const {
        auto args = token.empty() ? std::vector<std::string>{} : bearer(token);
        args.insert(args.end(), {"-X", "POST", url(path)});
        return curl(args);
    }
    nlohmann::json program(const std::string& name) const { return hbtest::stack::program(socket(), name); }
};

// A raw HTTP exchange on a fresh connection from `source` (a loopback address), in-process so
// that the flood's timings are the server's, not a client's start: the answer's status, or 0.
int raw_request(const char* source, int port, const std::string& request) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in from{};
    from.sin_family = AF_INET;
    ::inet_pton(AF_INET, source, &from.sin_addr);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<std::uint16_t>(port));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const timeval patience{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
    int status = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&from), sizeof from) == 0 &&
        ::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0 &&
        ::send(fd, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size())) {
        char buffer[4096];
        std::size_t got = 0;
        for (ssize_t n; got < sizeof buffer && (n = ::recv(fd, buffer + got, sizeof buffer - got, 0)) > 0;) got += static_cast<std::size_t>(n);
        if (got > 12 && std::strncmp(buffer, "HTTP/1.1 ", 9) == 0) status = std::atoi(buffer + 9);
    }
    ::close(fd);
    return status;
}

// Client threads stopped and joined however a test ends (a failed REQUIRE throws past them).
struct StopAndJoin {
    std::atomic<bool>& stop;
    std::vector<std::thread>& threads;
    ~StopAndJoin() {
        stop = true;
        for (auto& t : threads)
            if (t.joinable()) t.join();
    }
};

double median_ms(std::vector<double> samples) {
    std::sort(samples.begin(), samples.end());
    return samples[samples.size() / 2];
}

}  // namespace

TEST_CASE("a tokens file is refused with the reason when others may read it, when it is a symlink, or when a line is wrong") {
    Scratch dir;
    const fs::path tokens = dir.dir / "tokens";
    write_tokens(tokens);
    const auto book = TokenBook::load(tokens.string());
    CHECK(book.size() == 2);
    REQUIRE(book.find(kAdmin) != nullptr);
    CHECK(book.find(kAdmin)->role == Role::operate);
    CHECK(book.find(kAdmin)->name == "admin");
    CHECK(book.find(kViewer)->role == Role::read);
    CHECK(book.find(kAdmin + "x") == nullptr);
    CHECK(book.find("") == nullptr);

    fs::permissions(tokens, fs::perms::group_read, fs::perm_options::add);
    auto error = hbtest::error_of([&] { (void)TokenBook::load(tokens.string()); });
    CHECK_MESSAGE(error.find("has mode 0640: others may read the tokens; chmod 600 " + tokens.string()) != std::string::npos, error);
    fs::permissions(tokens, fs::perms::owner_read | fs::perms::owner_write);

    fs::create_symlink(tokens, dir.dir / "link");
    error = hbtest::error_of([&] { (void)TokenBook::load((dir.dir / "link").string()); });
    CHECK_MESSAGE(error.find("it is a symlink") != std::string::npos, error);

    auto refused = [&](const std::string& text) {
        const fs::path bad = dir.dir / "bad";
        std::ofstream(bad) << text;
        fs::permissions(bad, fs::perms::owner_read | fs::perms::owner_write);
        return hbtest::error_of([&] { (void)TokenBook::load(bad.string()); });
    };
    CHECK(refused("a admin " + kAdmin + "\n").find(":1: role 'admin' is not read or operate") != std::string::npos);
    CHECK(refused("\nshort read abc\n").find(":2: the token of 'short' is shorter than 20 characters") != std::string::npos);
    CHECK(refused("a read " + kAdmin + "\nb operate " + kAdmin + "\n").find(":2: 'b' has the same token as 'a'") != std::string::npos);
    CHECK(refused("only-two words\n").find(":1: give NAME ROLE TOKEN") != std::string::npos);
    CHECK(refused("# nothing\n").find("has no token") != std::string::npos);
    // The token itself is never in a message.
    CHECK(refused("a read " + kAdmin + " extra\n").find(kAdmin) == std::string::npos);

    if (::geteuid() == 0) {  // owned by another user: refused, even at mode 0600
        const passwd* nobody = ::getpwnam("nobody");
        REQUIRE(nobody != nullptr);
        REQUIRE(::chown(tokens.c_str(), nobody->pw_uid, static_cast<gid_t>(-1)) == 0);
        error = hbtest::error_of([&] { (void)TokenBook::load(tokens.string()); });
        CHECK_MESSAGE(error.find("is owned by uid " + std::to_string(nobody->pw_uid) + ", not by procctl's user") != std::string::npos, error);
    }
}

TEST_CASE("http config: listen addresses are literal ADDRESS:PORT, and tokens_file is required") {
    using hbwatch::tool::parse_listen_address;
    CHECK(parse_listen_address("127.0.0.1:9500") == std::pair<std::string, std::uint16_t>{"127.0.0.1", 9500});
    CHECK(parse_listen_address("[::1]:80") == std::pair<std::string, std::uint16_t>{"::1", 80});
    CHECK(parse_listen_address("0.0.0.0:1"));
    for (const char* bad : {"localhost:9500", ":9500", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "::1:9500", "[::1]9500", "1.2.3:9"})
        CHECK_MESSAGE(!parse_listen_address(bad), bad);
    Scratch dir;
    const fs::path config = dir.dir / "stack.yaml";
    std::ofstream(config) << "http: {listen: 127.0.0.1:9500}\nprograms: {a: {command: [sleep, '1']}}\n";
    int code = 0;
    std::string out;
    std::tie(code, out) = run({hbtest::bin("procctl"), "--check", "-c", config.string()});
    CHECK(code == 1);
    CHECK_MESSAGE(out.find("tokens_file is missing") != std::string::npos, out);
    std::ofstream(config) << "http: {listen: 'localhost:9500', tokens_file: /etc/t}\nprograms: {a: {command: [sleep, '1']}}\n";
    std::tie(code, out) = run({hbtest::bin("procctl"), "--check", "-c", config.string()});
    CHECK_MESSAGE(out.find("'localhost:9500' is not ADDRESS:PORT with a literal address") != std::string::npos, out);
}

TEST_CASE("over TCP: 401 without a valid token, 403 for a read token on a write, 200 by role, and no token in the log") {
    HttpStack stack("  sleeper: {command: [sleep, '1000']}\n", "", /*ipv6=*/true);
    auto answer = stack.get("/v1/programs", "");
    CHECK(answer.status == 401);
    CHECK(answer.body.find("give a token") != std::string::npos);
    CHECK(stack.get("/v1/programs", "not-a-token-0123456789abcdef").status == 401);
    answer = stack.get("/v1/programs", kViewer);
    REQUIRE_MESSAGE(answer.status == 200, answer.body);
    CHECK(nlohmann::json::parse(answer.body)[0]["name"] == "sleeper");
    for (const char* read : {"/v1/heartbeats", "/v1/ports", "/metrics", "/v1/events", "/api/heartbeat/status", "/api/ports/status"})
        CHECK_MESSAGE(stack.get(read, kViewer).status == 200, read);
    const auto pid = stack.program("sleeper")["pid"].get<int>();
    answer = stack.post("/v1/programs/sleeper/restart", kViewer);
    CHECK(answer.status == 403);
    CHECK_MESSAGE(answer.body.find("token 'viewer' from 127.0.0.1 has the read role") != std::string::npos, answer.body);
    CHECK(stack.post("/v1/reload", kViewer).status == 403);
    CHECK(stack.post("/v1/ports/9/kill", kViewer).status == 403);
    CHECK(stack.program("sleeper")["pid"].get<int>() == pid);  // refused means nothing happened
    // IPv6 listener, operate token: done.
    answer = curl({"-H", "Authorization: Bearer " + kAdmin, "-X", "POST", "http://[::1]:" + std::to_string(stack.port) + "/v1/programs/sleeper/restart"});
    REQUIRE_MESSAGE(answer.status == 200, answer.body);
    REQUIRE(hbtest::eventually([&] {
        const auto p = stack.program("sleeper");
        return p["state"] == "ready" && p["pid"].get<int>() != pid;
    }, 30s));
    // The page needs no token (it holds no data); anything else does.
    answer = stack.get("/", "");
    CHECK(answer.status == 200);
    CHECK(answer.body.find("<title>hbwatch</title>") != std::string::npos);
    CHECK(stack.get("/metrics", "").status == 401);

    CHECK(stack.procctl->wait_for_output("sleeper: restart requested by token 'admin' from ::1", 10s));
    const std::string log = stack.procctl->output_so_far();
    CHECK(log.find(kAdmin) == std::string::npos);
    CHECK(log.find(kViewer) == std::string::npos);
}

TEST_CASE("failed authentications are limited per address: the 31st in a minute is answered 429, and a valid token still passes") {
    HttpStack stack("  sleeper: {command: [sleep, '1000']}\n");
    const std::string bad = "wrong-token-0123456789abcdef";
    for (int i = 0; i < 30; ++i) REQUIRE(curl({"--interface", "127.0.0.7", "-H", "Authorization: Bearer " + bad, stack.url("/v1/programs")}).status == 401);
    CHECK(curl({"--interface", "127.0.0.7", "-H", "Authorization: Bearer " + bad, stack.url("/v1/programs")}).status == 429);
    CHECK(curl({"--interface", "127.0.0.7", stack.url("/v1/programs")}).status == 429);  // no token is a failure too
    // A neighbour at the same address with a valid token is not locked out; elsewhere is untouched.
    CHECK(curl({"--interface", "127.0.0.7", "-H", "Authorization: Bearer " + kViewer, stack.url("/v1/programs")}).status == 200);
    CHECK(curl({"--interface", "127.0.0.8", "-H", "Authorization: Bearer " + bad, stack.url("/v1/programs")}).status == 401);
    const auto metrics = stack.get("/metrics", kViewer).body;
    CHECK_MESSAGE(metrics.find("hbwatch_http_auth_failures_total 31") != std::string::npos, metrics);
    CHECK(metrics.find("hbwatch_http_rate_limited_total 2") != std::string::npos);
}

TEST_CASE("TLS: curl reaches the API with a certificate openssl made for the test, and plain HTTP to it gets nothing") {
    Scratch certs;
    const fs::path cert = certs.dir / "cert.pem", key = certs.dir / "key.pem";
    int code = 0;
    std::string out;
    std::tie(code, out) = run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key.string(), "-out",
                            cert.string()});
    REQUIRE_MESSAGE(code == 0, out);
    HttpStack stack("  sleeper: {command: [sleep, '1000']}\n", "  cert: " + cert.string() + "\n  key: " + key.string() + "\n");
    const std::string url = "https://127.0.0.1:" + std::to_string(stack.port) + "/v1/programs";
    auto answer = curl({"--cacert", cert.string(), "-H", "Authorization: Bearer " + kViewer, url});
    REQUIRE_MESSAGE(answer.status == 200, answer.body);
    CHECK(nlohmann::json::parse(answer.body)[0]["name"] == "sleeper");
    CHECK(curl({"--cacert", cert.string(), url}).status == 401);
    // Without the CA, curl refuses the server: the certificate is really checked.
    CHECK(curl({"-H", "Authorization: Bearer " + kViewer, url}).curl_exit != 0);
    CHECK(stack.get("/v1/programs", kViewer).status != 200);
}

TEST_CASE("GET /metrics passes promtool check metrics and has the stack's, the table's and the events' families") {
    hbtest::ScratchKey key;
    HttpStack stack("  beater:\n    command: [" + hbtest::bin("demo_service") + ", beater, --timeout, 10s]\n    environment: {HBWATCH_KEY: \"" +
                        hbwatch::format_key(key.key()) + "\"}\n    ready: beat\n",
                    "  anonymous_metrics: true\n");
    REQUIRE(hbtest::eventually([&] { return stack.program("beater")["state"] == "ready"; }, 30s));
    // anonymous_metrics opens /metrics and nothing else.
    auto answer = stack.get("/metrics", "");
    REQUIRE(answer.status == 200);
    CHECK(stack.get("/v1/programs", "").status == 401);
    const fs::path scrape = stack.dir.dir / "scrape.txt";
    std::ofstream(scrape) << answer.body;
    int code = 0;
    std::string out;
    std::tie(code, out) = run({"sh", "-c", std::string(HBWATCH_PROMTOOL) + " check metrics < " + scrape.string()});
    CHECK_MESSAGE(code == 0, out << "\n" << answer.body);
    const std::string& text = answer.body;
    for (const char* line : {"hbwatch_program_state{program=\"beater\",state=\"ready\"} 1", "hbwatch_program_state{program=\"beater\",state=\"stopped\"} 0",
                             "hbwatch_program_ready{program=\"beater\"} 1", "hbwatch_program_restarts_total{program=\"beater\"} 0",
                             "hbwatch_events_total{kind=\"started\"} 1", "hbwatch_build_info{version=", "# TYPE hbwatch_entry_beats_total counter",
                             "hbwatch_entry_timeout_seconds{name=\"beater\","})
        CHECK_MESSAGE(text.find(line) != std::string::npos, line << "\n" << text);
    CHECK(std::regex_search(text, std::regex("hbwatch_program_start_time_seconds\\{program=\"beater\"\\} 1[0-9]{9}")));
    CHECK(std::regex_search(text, std::regex("hbwatch_program_resident_memory_bytes\\{program=\"beater\"\\} [1-9][0-9]+")));
    CHECK(std::regex_search(text, std::regex("(^|\n)up[ {]")) == false);  // Prometheus makes `up` itself
}

TEST_CASE("the real Prometheus server scrapes procctl with a token: the target is up and a restart is counted") {
    HttpStack stack("  flaky:\n    command: [sh, -c, 'sleep 0.3; exit 1']\n    restart_delay: 100ms\n  steady: {command: [sleep, '1000']}\n");
    const int web_port = hbtest::free_port();
    const fs::path credentials = stack.dir.dir / "scrape-token";
    std::ofstream(credentials) << kViewer;
    const fs::path config = stack.dir.dir / "prometheus.yml";
    std::ofstream(config) << "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                          << "scrape_configs:\n"
                          << "  - job_name: hbwatch\n"
                          << "    authorization: {credentials_file: " << credentials.string() << "}\n"
                          << "    static_configs: [{targets: ['127.0.0.1:" << stack.port << "']}]\n";
    Process prometheus({HBWATCH_PROMETHEUS, "--config.file=" + config.string(), "--storage.tsdb.path=" + (stack.dir.dir / "tsdb").string(),
                        "--web.listen-address=127.0.0.1:" + std::to_string(web_port)});
    const std::string api = "http://127.0.0.1:" + std::to_string(web_port) + "/api/v1/";
    std::string last;
    const bool up = hbtest::eventually([&] {
        const auto answer = curl({api + "targets"});
        last = answer.body;
        if (answer.status != 200) return false;
        const auto targets = nlohmann::json::parse(answer.body);
        const auto& active = targets["data"]["activeTargets"];
        return !active.empty() && active[0]["health"] == "up";
    }, 60s);
    REQUIRE_MESSAGE(up, last << "\n" << prometheus.output_so_far());
    double restarts = 0;
    const bool counted = hbtest::eventually([&] {
        const auto answer = curl({"-G", api + "query", "--data-urlencode", "query=hbwatch_program_restarts_total{program=\"flaky\"}"});
        last = answer.body;
        if (answer.status != 200) return false;
        const auto result = nlohmann::json::parse(answer.body)["data"]["result"];
        if (result.empty()) return false;
        restarts = std::stod(result[0]["value"][1].get<std::string>());
        return restarts >= 1;
    }, 60s);
    CHECK_MESSAGE(counted, last);
    CHECK(restarts >= 1);
    const auto up_query = curl({"-G", api + "query", "--data-urlencode", "query=up{job=\"hbwatch\"}"});
    CHECK_MESSAGE(up_query.body.find("\"1\"") != std::string::npos, up_query.body);
}

TEST_CASE("headless Chromium renders the status page with a row for each program, and a screenshot is kept") {
    HttpStack stack("  alpha: {command: [sh, -c, \"systemd-notify --ready --status='serving 3 clients'; exec sleep 1000\"], ready: notify}\n"
                    "  beta: {command: [sleep, '1000']}\n");
    REQUIRE(hbtest::eventually([&] { return stack.program("alpha")["status"] == "serving 3 clients"; }, 30s));
    // The token is handed in the fragment, which never reaches the server; the page keeps it in
    // sessionStorage and takes it out of the address.
    const std::string page = stack.url("/#token=" + kViewer);
    std::vector<std::string> chromium = {"chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                                         "--user-data-dir=" + (stack.dir.dir / "chromium").string(), "--virtual-time-budget=10000"};
    auto dump = chromium;
    dump.insert(dump.end(), {"--dump-dom", page});
    int code = 0;
    std::string dom;
    std::tie(code, dom) = run(dump);
    REQUIRE_MESSAGE(code == 0, dom);
    CHECK_MESSAGE(dom.find("<tr data-program=\"alpha\">") != std::string::npos, dom);
    CHECK(dom.find("<tr data-program=\"beta\">") != std::string::npos);
    CHECK(dom.find(kViewer) == std::string::npos);  // not left in the page
    CHECK(dom.find("started alpha as pid") != std::string::npos);  // the events list
    CHECK_MESSAGE(dom.find("<td class=\"wrap hide-narrow\" data-label=\"status\">serving 3 clients</td>") != std::string::npos, dom);
    CHECK(std::regex_search(dom, std::regex("data-port=\"" + std::to_string(stack.port) + "\"")));  // procctl's own listener
    // Kept in the build's artifacts/ (the screenshots of a run as another user stay in its scratch directory).
    fs::path artifacts = fs::path(HBWATCH_ARTIFACT_DIR);
    std::error_code made;
    fs::create_directories(artifacts, made);
    if (::access(artifacts.c_str(), W_OK) != 0) artifacts = stack.dir.dir;
    auto shot = chromium;
    shot.insert(shot.end(), {"--hide-scrollbars", "--window-size=1280,900", "--screenshot=" + (artifacts / "status-page.png").string(), page});
    std::tie(code, dom) = run(shot);
    CHECK_MESSAGE(code == 0, dom);
    CHECK(fs::file_size(artifacts / "status-page.png") > 10000);
    shot = chromium;
    shot.insert(shot.end(), {"--hide-scrollbars", "--window-size=390,844", "--screenshot=" + (artifacts / "status-page-phone.png").string(), page});
    std::tie(code, dom) = run(shot);
    CHECK_MESSAGE(code == 0, dom);

    // A button pressed in the page (through the DevTools protocol): a read token's press is
    // refused and changes nothing; an operate token's restarts the program.
    const int before = stack.program("beta")["pid"].get<int>();
    const std::string press = std::string(HBWATCH_SOURCE_DIR) + "/tests/helpers/press_button.py";
    const std::string button = "tr[data-program=\"beta\"] button.restart";
    std::tie(code, dom) = run({"python3", press, "chromium", page, button, (stack.dir.dir / "press-read").string()});
    CHECK_MESSAGE(code == 0, dom);
    CHECK_MESSAGE(dom.find("beta: restart refused: token 'viewer' from 127.0.0.1 has the read role") != std::string::npos, dom);
    CHECK(stack.program("beta")["pid"].get<int>() == before);
    std::tie(code, dom) = run({"python3", press, "chromium", stack.url("/#token=" + kAdmin), button, (stack.dir.dir / "press-operate").string()});
    CHECK_MESSAGE(code == 0, dom);
    CHECK(dom.find("clicked: beta: restart requested") != std::string::npos);
    CHECK(hbtest::eventually([&] {
        const auto p = stack.program("beta");
        return p["state"] == "ready" && p["pid"].get<int>() != before;
    }, 30s));
    CHECK(stack.procctl->wait_for_output("beta: restart requested by token 'admin' from 127.0.0.1", 10s));
}

TEST_CASE("ports: the API stops a stack program's listener, refuses an outsider's without any=1, and says how each ended") {
    const int inside = hbtest::free_port();
    HttpStack stack("  listener:\n    command: [" + hbtest::bin("tcp_listen") + ", '" + std::to_string(inside) +
                    "', '0']\n    ready: tcp:127.0.0.1:" + std::to_string(inside) + "\n    restart_delay: 100ms\n");
    REQUIRE(hbtest::eventually([&] { return stack.program("listener")["state"] == "ready"; }, 30s));
    const int pid = stack.program("listener")["pid"].get<int>();
    auto ports = nlohmann::json::parse(stack.get("/v1/ports", kViewer).body);
    bool marked = false;
    for (const auto& socket : ports)
        if (socket["port"] == inside) marked = socket["stack"] == true && socket["holders"][0]["part_of"] == "listener";
    CHECK_MESSAGE(marked, ports.dump());

    auto answer = stack.post("/v1/ports/" + std::to_string(inside) + "/kill?grace=5s", kAdmin);
    REQUIRE_MESSAGE(answer.status == 200, answer.body);
    auto report = nlohmann::json::parse(answer.body);
    REQUIRE(report["holders"].size() == 1);
    CHECK(report["holders"][0]["pid"] == pid);
    CHECK(report["holders"][0]["outcome"] == "exited_on_term");

    // Outside the stack: refused unless any=1, and then stopped.
    const int outside = hbtest::free_port();
    Process stranger({hbtest::bin("tcp_listen"), std::to_string(outside), "0"});
    REQUIRE(stranger.wait_for_output("listening", 10s));
    answer = stack.post("/v1/ports/" + std::to_string(outside) + "/kill", kAdmin);
    CHECK(answer.status == 403);
    report = nlohmann::json::parse(answer.body);
    CHECK(report["holders"][0]["outcome"] == "refused");
    CHECK(report["holders"][0]["detail"].get<std::string>().find("not part of the stack") != std::string::npos);
    CHECK(stranger.running());
    answer = stack.post("/v1/ports/" + std::to_string(outside) + "/kill?any=1&grace=5s", kAdmin);
    CHECK(answer.status == 200);
    CHECK(stranger.wait_exit(10s));
    CHECK(WTERMSIG(stranger.wait()) == SIGTERM);

    // procctl's own port: never.
    answer = stack.post("/v1/ports/" + std::to_string(stack.port) + "/kill?any=1", kAdmin);
    CHECK(answer.status == 403);
    CHECK(answer.body.find("never signalled: this process itself") != std::string::npos);
    CHECK(stack.post("/v1/ports/" + std::to_string(hbtest::free_port()) + "/kill", kAdmin).status == 404);
    CHECK(stack.post("/v1/ports/0/kill", kAdmin).status == 400);
    CHECK(stack.post("/v1/ports/80/kill?grace=forever", kAdmin).status == 400);
}

TEST_CASE("proctab kill --port: TERM for a holder that obeys it, KILL after the grace for one that ignores it") {
    const int obeys = hbtest::free_port();
    Process first({hbtest::bin("tcp_listen"), std::to_string(obeys), "0"});
    REQUIRE(first.wait_for_output("listening", 10s));
    int code = 0;
    std::string out;
    std::tie(code, out) = run({hbtest::bin("proctab"), "ports", "--json"});
    REQUIRE(code == 0);
    bool listed = false;
    for (const auto& socket : nlohmann::json::parse(out))
        if (socket["port"] == obeys) listed = !socket["holders"].empty() && socket["holders"][0]["pid"] == first.pid();
    CHECK_MESSAGE(listed, out);
    std::tie(code, out) = run({hbtest::bin("proctab"), "kill", "--port", std::to_string(obeys), "--grace", "10s"});
    CHECK_MESSAGE(code == 0, out);
    CHECK(out.find("pid " + std::to_string(first.pid()) + " (tcp_listen): exited_on_term") != std::string::npos);
    REQUIRE(first.wait_exit(10s));
    CHECK(WTERMSIG(first.wait()) == SIGTERM);

    const int ignores = hbtest::free_port();
    Process second({"sh", "-c", "trap '' TERM; exec " + hbtest::bin("tcp_listen") + " " + std::to_string(ignores) + " 0"});
    REQUIRE(second.wait_for_output("listening", 10s));
    const auto started = std::chrono::steady_clock::now();
    std::tie(code, out) = run({hbtest::bin("proctab"), "kill", "--port", std::to_string(ignores), "--grace", "500ms", "--json"});
    CHECK_MESSAGE(code == 0, out);
    CHECK(std::chrono::steady_clock::now() - started >= 500ms);
    const auto report = nlohmann::json::parse(out);
    CHECK(report["holders"][0]["outcome"] == "killed");
    REQUIRE(second.wait_exit(10s));
    CHECK(WTERMSIG(second.wait()) == SIGKILL);

    std::tie(code, out) = run({hbtest::bin("proctab"), "kill", "--port", std::to_string(hbtest::free_port())});
    CHECK(code == 1);
    CHECK(out.find("nothing listens on TCP port") != std::string::npos);
    std::tie(code, out) = run({hbtest::bin("proctab"), "kill"});
    CHECK(code == 2);
    CHECK(out.find("give NAME (a program's name) or --port N") != std::string::npos);
}

TEST_CASE("a flood from 32 unauthenticated clients does not delay an authorised request or procctl's part of a restart beyond 50 ms") {
    HttpStack stack("  sleeper:\n    command: [sleep, '1000']\n    restart_delay: 0s\n");
    auto timed = [](const std::function<void()>& action) {
        const auto start = std::chrono::steady_clock::now();
        action();
        return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    };
    const std::string socket = stack.socket().string();
    const std::string request = "GET /v1/programs/sleeper HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + kViewer + "\r\n\r\n";
    auto authorised = [&] { return timed([&] { REQUIRE(raw_request("127.0.0.1", stack.port, request) == 200); }); };
    // procctl's part of a restart, from its own events (CLOCK_MONOTONIC, as steady_clock here):
    // from the request to its stop signal, and from the old process's exit, as procctl saw it,
    // to the new one's fork. What the kernel takes to run the program's own processes (to die
    // of SIGTERM, to exec) is the host's: on a loaded 2-core machine, the scheduler's autogroups
    // (one per session) have left a fresh program unscheduled for seconds. `whole` is the
    // restart as the unix socket sees it, request to the new process ready, for the message.
    std::uint64_t cursor = 0;
    auto events_since = [&] {
        const auto page = nlohmann::json::parse(hbwatch::tool::control_request(socket, "GET", "/v1/events?since=" + std::to_string(cursor)).body);
        cursor = page["next"].get<std::uint64_t>();
        return page["events"];
    };
    std::vector<double> whole_quiet, whole_flooded;
    auto restart = [&](std::vector<double>& whole) {
        const int before = stack.program("sleeper")["pid"].get<int>();
        (void)events_since();
        const auto asked = std::chrono::steady_clock::now();
        whole.push_back(timed([&] {
            REQUIRE(hbwatch::tool::control_request(socket, "POST", "/v1/programs/sleeper/restart").status == 200);
            REQUIRE(hbtest::eventually([&] {
                const auto p = nlohmann::json::parse(hbwatch::tool::control_request(socket, "GET", "/v1/programs/sleeper").body)[0];
                return p["state"] == "ready" && p["pid"].get<int>() != before;
            }, 10s));
        }));
        const double asked_ms = std::chrono::duration<double, std::milli>(asked.time_since_epoch()).count();
        const auto part = procctl_restart_part(events_since(), "sleeper", asked_ms);
        REQUIRE_MESSAGE(part.has_value(), "events of the restart not found");
        return *part;
    };
    std::vector<double> quiet_requests, quiet_restarts, flood_requests, flood_restarts;
    for (int i = 0; i < 9; ++i) {
        quiet_requests.push_back(authorised());
        quiet_restarts.push_back(restart(whole_quiet));
    }
    std::atomic<bool> stop{false};
    std::atomic<long> sent{0};
    std::vector<std::thread> flood;
    const StopAndJoin joiner{stop, flood};
    for (int i = 0; i < 32; ++i)
        flood.emplace_back([&, i] {
            // Each from an address of its own (127.0.1.N): no token, or a wrong one.
            const std::string source = "127.0.1." + std::to_string(i + 1);
            const std::string requests[] = {"GET /v1/programs HTTP/1.1\r\nHost: x\r\n\r\n",
                                            "POST /v1/programs/sleeper/restart HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope-0123456789abcdefghij\r\n\r\n"};
            for (long n = 0; !stop.load(); ++n) {
                raw_request(source.c_str(), stack.port, requests[n % 2]);
                ++sent;
            }
        });
    std::this_thread::sleep_for(200ms);  // the flood under way (a load, not a wait for a state)
    for (int i = 0; i < 9; ++i) {
        flood_requests.push_back(authorised());
        flood_restarts.push_back(restart(whole_flooded));
    }
    stop = true;
    for (auto& t : flood) t.join();
    const double extra_request = median_ms(flood_requests) - median_ms(quiet_requests);
    const double extra_restart = median_ms(flood_restarts) - median_ms(quiet_restarts);
    MESSAGE("flood: " << sent.load() << " unauthenticated requests; authorised request median " << median_ms(quiet_requests) << " ms quiet, "
                      << median_ms(flood_requests) << " ms flooded; restart median " << median_ms(quiet_restarts) << " ms quiet, "
                      << median_ms(flood_restarts) << " ms flooded (procctl's part); the whole restart "
                      << median_ms(whole_quiet) << " ms quiet, " << median_ms(whole_flooded) << " ms flooded (the host's scheduling too)");
    CHECK(sent.load() > 100);
    CHECK(extra_request < 50.0);
    CHECK(extra_restart < 50.0);
    CHECK(stack.program("sleeper")["state"] == "ready");  // the wrong-token restarts did nothing
}

TEST_CASE("a reload moves the listener and rotates the tokens, and a tokens file it refuses keeps everything as it was") {
    HttpStack stack("  sleeper: {command: [sleep, '1000']}\n");
    const int old_port = stack.port;
    const int new_port = hbtest::free_port();
    const std::string rotated = "rotated-0123456789abcdef01234567";
    std::ofstream(stack.tokens) << "admin operate " << rotated << "\n";
    std::ofstream(stack.dir.dir / "stack.yaml") << "run_dir: " << (stack.dir.dir / "run").string() << "\n"
                                                << "http: {listen: '127.0.0.1:" << new_port << "', tokens_file: " << stack.tokens.string() << "}\n"
                                                << "programs:\n  sleeper: {command: [sleep, '1000']}\n";
    auto reply = hbwatch::tool::control_request(stack.socket().string(), "POST", "/v1/reload");
    REQUIRE_MESSAGE(reply.status == 200, reply.body);
    CHECK(nlohmann::json::parse(reply.body)["http"] == "listening on [\"127.0.0.1:" + std::to_string(new_port) + "\"]");
    stack.port = new_port;
    CHECK(stack.get("/v1/programs", rotated).status == 200);
    CHECK(stack.get("/v1/programs", kAdmin).status == 401);  // the old token is gone
    CHECK(curl({"http://127.0.0.1:" + std::to_string(old_port) + "/"}).curl_exit == 7);  // nothing listens there now

    fs::permissions(stack.tokens, fs::perms::others_read, fs::perm_options::add);
    reply = hbwatch::tool::control_request(stack.socket().string(), "POST", "/v1/reload");
    CHECK(reply.status == 400);
    CHECK_MESSAGE(reply.body.find("has mode 0604: others may read the tokens") != std::string::npos, reply.body);
    CHECK(reply.body.find("the running config is kept") != std::string::npos);
    CHECK(stack.get("/v1/programs", rotated).status == 200);  // still serving, with what it had
}

TEST_CASE("a reload whose new address cannot be bound keeps the old listener and leaves no new one behind") {
    HttpStack stack("  sleeper: {command: [sleep, '1000']}\n", "", /*ipv6=*/true);
    const int taken = hbtest::free_port();
    Process holder({hbtest::bin("tcp_listen"), std::to_string(taken), "0"});
    REQUIRE(holder.wait_for_output("listening", 10s));
    const int fresh = hbtest::free_port();
    std::ofstream(stack.dir.dir / "stack.yaml") << "run_dir: " << (stack.dir.dir / "run").string() << "\n"
                                                << "http: {listen: ['127.0.0.1:" << stack.port << "', '127.0.0.1:" << fresh << "', '127.0.0.1:"
                                                << taken << "'], tokens_file: " << stack.tokens.string() << "}\n"
                                                << "programs:\n  sleeper: {command: [sleep, '1000']}\n";
    const auto reply = hbwatch::tool::control_request(stack.socket().string(), "POST", "/v1/reload");
    CHECK(reply.status == 400);
    CHECK_MESSAGE(reply.body.find("cannot listen on 127.0.0.1:" + std::to_string(taken)) != std::string::npos, reply.body);
    CHECK(stack.get("/v1/programs", kViewer).status == 200);                               // kept
    CHECK(curl({"http://127.0.0.1:" + std::to_string(fresh) + "/"}).curl_exit == 7);      // not left bound
    // The same endpoint spelled otherwise is the listener it already has, not a second bind.
    std::ofstream(stack.dir.dir / "stack.yaml") << "run_dir: " << (stack.dir.dir / "run").string() << "\n"
                                                << "http: {listen: ['127.0.0.1:" << stack.port << "', '[0:0:0:0:0:0:0:1]:" << stack.port
                                                << "'], tokens_file: " << stack.tokens.string() << "}\nprograms:\n  sleeper: {command: [sleep, '1000']}\n";
    const auto again = hbwatch::tool::control_request(stack.socket().string(), "POST", "/v1/reload");
    CHECK_MESSAGE(again.status == 200, again.body);
    CHECK(stack.get("/v1/programs", kViewer).status == 200);
    CHECK(curl({"-H", "Authorization: Bearer " + kViewer, "http://[::1]:" + std::to_string(stack.port) + "/v1/programs"}).status == 200);
}

TEST_CASE("a stream opened with a token ends when a reload takes the token away") {
    HttpStack stack("  sleeper: {command: [sleep, '1000']}\n");
    Process follower({"curl", "-sSN", "-H", "Authorization: Bearer " + kViewer, stack.url("/v1/events?follow=1")});
    REQUIRE(follower.wait_for_output("started sleeper", 10s));
    std::ofstream(stack.tokens) << "admin operate " << kAdmin << "\n";  // the viewer's line is gone
    REQUIRE(hbwatch::tool::control_request(stack.socket().string(), "POST", "/v1/reload").status == 200);
    CHECK(follower.wait_exit(10s));
    // The admin's own stream goes on: it sees what happens after the reload.
    Process admin({"curl", "-sSN", "-H", "Authorization: Bearer " + kAdmin, stack.url("/v1/events?follow=1")});
    REQUIRE(admin.wait_for_output("started sleeper", 10s));
    REQUIRE(hbwatch::tool::control_request(stack.socket().string(), "POST", "/v1/reload").status == 200);
    REQUIRE(hbwatch::tool::control_request(stack.socket().string(), "POST", "/v1/programs/sleeper/restart").status == 200);
    CHECK(admin.wait_for_output_count("started sleeper", 2, 10s));
}

TEST_CASE("many scrapes at once share one answer, and procctl does not wait out a port kill's grace to stop") {
    HttpStack stack("  sleeper: {command: [sleep, '1000']}\n");
    std::vector<std::unique_ptr<Process>> scrapes;
    for (int i = 0; i < 12; ++i)  // each from an address of its own: the cap per address is not what is tested
        scrapes.push_back(std::make_unique<Process>(std::vector<std::string>{"curl", "-sS", "--interface", "127.0.2." + std::to_string(i + 1),
                                                                             "-o", "/dev/null", "-w", "%{http_code}", "-H",
                                                                             "Authorization: Bearer " + kViewer, stack.url("/metrics")}));
    for (auto& scrape : scrapes) {
        REQUIRE(scrape->wait_exit(30s));
        CHECK(scrape->output() == "200");  // none turned away as busy
    }
    // A holder that ignores SIGTERM, stopped with a minute's grace through the API...
    const int port = hbtest::free_port();
    Process stubborn({"sh", "-c", "trap '' TERM; exec " + hbtest::bin("tcp_listen") + " " + std::to_string(port) + " 0"});
    REQUIRE(stubborn.wait_for_output("listening", 10s));
    Process kill({"curl", "-sS", "-X", "POST", "-H", "Authorization: Bearer " + kAdmin, stack.url("/v1/ports/" + std::to_string(port) + "/kill?any=1&grace=60s")});
    REQUIRE(stack.procctl->wait_for_output("port " + std::to_string(port) + ": stopping what holds it", 10s));
    CHECK(stack.post("/v1/ports/" + std::to_string(port) + "/kill?grace=61s", kAdmin).status == 400);  // a minute at most
    // ...and procctl asked to stop meanwhile: it does not wait out the minute.
    const auto asked = std::chrono::steady_clock::now();
    ::kill(stack.procctl->pid(), SIGTERM);
    REQUIRE(stack.procctl->wait_exit(30s));
    CHECK(std::chrono::steady_clock::now() - asked < 20s);
    CHECK(stubborn.running());  // SIGTERM only: the KILL was never due
}

TEST_CASE("procctl stops promptly while clients keep scraping it") {
    HttpStack stack("  sleeper: {command: [sleep, '1000']}\n");
    std::atomic<bool> stop{false};
    std::vector<std::thread> scrapers;
    const StopAndJoin joiner{stop, scrapers};
    std::atomic<long> answered{0};
    for (int i = 0; i < 4; ++i)
        scrapers.emplace_back([&, i] {
            const std::string source = "127.0.3." + std::to_string(i + 1);
            const std::string request = "GET " + std::string(i % 2 ? "/metrics" : "/v1/ports") + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                                        kViewer + "\r\n\r\n";
            while (!stop.load())
                if (raw_request(source.c_str(), stack.port, request) == 200) ++answered;
        });
    REQUIRE(hbtest::eventually([&] { return answered.load() > 20; }, 30s));
    const auto asked = std::chrono::steady_clock::now();
    ::kill(stack.procctl->pid(), SIGTERM);
    REQUIRE(stack.procctl->wait_exit(30s));
    CHECK(std::chrono::steady_clock::now() - asked < 15s);
    CHECK(WEXITSTATUS(stack.procctl->wait()) == 0);
}
