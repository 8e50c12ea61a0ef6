#include "engine/config_reader.h"

#include <map>
#include <sstream>

#include <yaml-cpp/eventhandler.h>

namespace hbwatch::tool {
namespace {

// What a config may expand to, counting each node once per place it appears (an alias counts
// the whole of what it names) and each scalar's bytes: a 1 MiB file can hold billions of
// nodes through aliases of aliases, and yaml-cpp would have them walked.
constexpr std::size_t kMaxExpandedWeight = std::size_t{4} << 20;

// A pass over the parser's events before the file is loaded: refuses a key given twice in one
// map (yaml-cpp keeps both, and its lookups take the first) and a document whose aliases
// expand past kMaxExpandedWeight, each at its line and column.
class ShapeCheck final : public YAML::EventHandler {
public:
    explicit ShapeCheck(const std::string& path) : path_(path) {}

    void OnDocumentStart(const YAML::Mark&) override {}
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override { node(mark, anchor, 1, nullptr); }
    void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
        // yaml-cpp and other readers disagree on which of two keys wins once one is an alias.
        if (!stack_.empty() && stack_.back().map && stack_.back().next_is_key)
            fail(mark, "an alias cannot stand as a key: write the key itself");
        const std::size_t weight = anchor < weights_.size() ? weights_[anchor] : 1;
        if (weight > kMaxExpandedWeight - total_)
            fail(mark, "this alias makes the config expand past " + std::to_string(kMaxExpandedWeight >> 20) +
                           " MiB of nodes and text; an alias may repeat a part of the file, not multiply it");
        node(mark, 0, weight, nullptr);
    }
    void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor, const std::string& value) override {
        node(mark, anchor, 1 + value.size(), &value);
    }
    void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor, YAML::EmitterStyle::value) override {
        open(mark, anchor, false);
    }
    void OnSequenceEnd() override { close(); }
    void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor, YAML::EmitterStyle::value) override {
        open(mark, anchor, true);
    }
    void OnMapEnd() override { close(); }

private:
    struct Open {
        YAML::anchor_t anchor;
        std::size_t weight = 1;
        bool map;
        bool next_is_key = true;
        std::map<std::string, YAML::Mark> keys;
    };

    [[noreturn]] void fail(const YAML::Mark& mark, const std::string& what) const {
        throw Error(EINVAL, path_ + ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1) + ": " + what);
    }
    void remember(YAML::anchor_t anchor, std::size_t weight) {
        if (anchor == 0) return;
        if (weights_.size() <= anchor) weights_.resize(anchor + 1, 1);
        weights_[anchor] = weight;
    }
    // A finished node of `weight`: counted, and checked as a key when its map expects one.
    void node(const YAML::Mark& mark, YAML::anchor_t anchor, std::size_t weight, const std::string* scalar) {
        total_ += weight;
        if (total_ > kMaxExpandedWeight)
            fail(mark, "the config expands past " + std::to_string(kMaxExpandedWeight >> 20) + " MiB of nodes and text");
        remember(anchor, weight);
        if (stack_.empty()) return;
        Open& parent = stack_.back();
        parent.weight += weight;
        if (!parent.map) return;
        if (parent.next_is_key && scalar != nullptr) {
            const auto [at, fresh] = parent.keys.emplace(*scalar, mark);
            if (!fresh)
                fail(mark, "the key '" + *scalar + "' is given twice in one map, first at line " +
                               std::to_string(at->second.line + 1) + ": give each key once");
        }
        parent.next_is_key = !parent.next_is_key;
    }
    void open(const YAML::Mark& mark, YAML::anchor_t anchor, bool map) {
        total_ += 1;
        if (total_ > kMaxExpandedWeight)
            fail(mark, "the config expands past " + std::to_string(kMaxExpandedWeight >> 20) + " MiB of nodes and text");
        stack_.push_back(Open{anchor, 1, map, true, {}});
        marks_.push_back(mark);
    }
    void close() {
        Open done = std::move(stack_.back());
        const YAML::Mark mark = marks_.back();
        stack_.pop_back();
        marks_.pop_back();
        total_ -= done.weight;  // counted as it came; node() counts it again, whole
        node(mark, done.anchor, done.weight, nullptr);
    }

    const std::string& path_;
    std::vector<Open> stack_;
    std::vector<YAML::Mark> marks_;
    std::vector<std::size_t> weights_;  // by anchor: what an alias of it weighs
    std::size_t total_ = 0;
};

}  // namespace

YAML::Node load_checked_yaml(const std::string& text, const std::string& path) {
    try {
        {
            std::istringstream stream(text);
            YAML::Parser parser(stream);
            ShapeCheck shape(path);
            while (parser.HandleNextDocument(shape)) {
            }
        }
        return YAML::Load(text);
    } catch (const YAML::ParserException& e) {
        throw Error(EINVAL, path + ":" + std::to_string(e.mark.line + 1) + ":" + std::to_string(e.mark.column + 1) +
                                ": not valid YAML (or JSON): " + e.msg);
    }
}

}  // namespace hbwatch::tool
