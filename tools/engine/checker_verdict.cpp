// checkproc's verdicts on overdue entries (hang_verdict.h): what a hung process is doing,
// decided before any signal, and the second looks and extensions that follow from it; and the
// budget of the diagnoses kept before its stops. The rest of the checker is in checker.cpp.
#include <algorithm>
#include <chrono>

#include "core/clock.h"
#include "core/duration.h"
#include "engine/checker.h"

namespace hbwatch::tool {

std::optional<std::uint64_t> Checker::look_again_at(std::uint32_t index, std::uint64_t token) const {
    const auto it = stalls_.find({index, token});
    if (it == stalls_.end() || it->second.look_again_ns == 0) return std::nullopt;
    return it->second.look_again_ns;
}

std::vector<std::uint32_t> Checker::due_second_looks(std::uint64_t now_ns, std::optional<std::uint64_t>& next) const {
    std::vector<std::uint32_t> due;
    next.reset();
    for (const auto& [key, stall] : stalls_) {
        if (!stall.first) continue;  // spared, or extended: the next run's
        if (stall.look_again_ns <= now_ns) due.push_back(stall.index);
        else if (!next || stall.look_again_ns < *next) next = stall.look_again_ns;
    }
    return due;
}

// A diagnosis of `target` before its stop (hang_diagnosis.h), as the budget allows: none once
// diagnoses have taken a second within the last one, so that many hangs at once are not each
// held up by the others' diagnoses.
Diagnosis Checker::diagnose(const Pidfd& target, const SlotSnapshot& slot, const std::string& why) {
    const std::uint64_t now = monotonic_now_ns();
    if (now >= diagnosis_window_ns_ + to_ns(std::chrono::seconds(1))) {
        diagnosis_window_ns_ = now;
        diagnosis_spent_ns_ = 0;
    }
    DiagnosisOptions options = options_.diagnosis;
    if (diagnosis_spent_ns_ >= to_ns(std::chrono::seconds(1))) options.level = DiagnoseLevel::none;
    Diagnosis diagnosis = write_diagnosis(options, target, std::string(slot.name()), why);
    diagnosis_spent_ns_ += static_cast<std::uint64_t>(diagnosis.took.count()) * 1000;
    return diagnosis;
}

bool Checker::spare_for_now(const SlotSnapshot& slot, const std::string& who, const std::string& hung, std::uint64_t now_ns) {
    Stall& stall = stalls_[{slot.index, slot.token}];
    if (stall.last_beat_ns != slot.last_beat_ns) stall = Stall{slot.index, slot.last_beat_ns, std::nullopt, 0, false, {}};
    if (stall.first && now_ns < stall.look_again_ns) return true;  // its second look is not due yet
    const ProcessLook look = look_at(slot.process.pid, monotonic_now_ns());
    const HangVerdict verdict = stall.first ? judge_hang(*stall.first, &look) : judge_hang(look, nullptr);
    stall.first.reset();
    stall.look_again_ns = 0;
    stall.words = verdict.words;
    using Kind = HangVerdict::Kind;
    nlohmann::json facts = hang_facts(slot, now_ns);
    facts["verdict"] = to_string(verdict.kind);
    facts["verdict_words"] = verdict.words;
    switch (verdict.kind) {
        case Kind::hung: return false;
        case Kind::look_again:
            // Runnable or in I/O: a starved process, or a busy one that is hung. A second look
            // a window later tells them apart (the delay a verdict adds to a stop, at most 1 s).
            stall.first = look;
            stall.look_again_ns = look.at_ns + look_window_ns(to_ns(slot.timeout));
            log_(LogLevel::debug, who + ": " + hung + "; runnable or in I/O: looked at again in " +
                                      human_duration(std::chrono::milliseconds((stall.look_again_ns - look.at_ns) / 1'000'000)));
            return true;
        case Kind::stopped:
        case Kind::traced:
            if (!options_.spare_stopped) return false;  // --stopped kill
            [[fallthrough]];
        case Kind::frozen: {
            // Spared, and said again every timeout (at least every second) while it lasts.
            const std::uint64_t every = std::max<std::uint64_t>(to_ns(slot.timeout), to_ns(std::chrono::seconds(1)));
            if (stall.look_again_ns == 0 || now_ns >= stall.look_again_ns) {
                log_(LogLevel::warn, who + ": " + hung + "; " + verdict.words + ": spared, not signalled" +
                                         (verdict.kind == Kind::frozen ? "" : " (--stopped spare; --stopped kill stops it)"));
                if (!stall.said) tell(EventKind::heartbeat_hung, slot, who + ": hung: " + verdict.words + "; spared, not signalled", facts);
                stall.said = true;
            }
            stall.look_again_ns = now_ns + every;
            return true;
        }
        case Kind::starved: {
            // A bounded extension: one more timeout past its deadline, however starved it stays.
            const std::uint64_t until = deadline_ns(slot) + to_ns(slot.timeout);
            if (now_ns >= until) {
                stall.words = verdict.words + ", and its extension of one timeout is over";
                return false;
            }
            if (!stall.said) {
                const auto left = std::chrono::milliseconds((until - now_ns) / 1'000'000);
                log_(LogLevel::warn, who + ": late: " + verdict.words + "; spared for one more timeout (" + human_duration(left) +
                                         " from now), stopped then if it has not beaten");
                facts["extension_seconds"] = static_cast<double>(left.count()) / 1000.0;
                tell(EventKind::heartbeat_late, slot, who + ": late: " + verdict.words + "; spared for one more timeout", facts);
                stall.said = true;
            }
            stall.look_again_ns = until;
            return true;
        }
    }
    return false;
}

}  // namespace hbwatch::tool
