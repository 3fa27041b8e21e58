// A small open-addressing map from non-negative int32 ids to int32 values.
//
// Sized for the number of ids a batch or a query touches, never for the number of neurons,
// so memory and time stay independent of the layer's width.
#ifndef TF_LSH_OPS_CC_CORE_ID_MAP_H_
#define TF_LSH_OPS_CC_CORE_ID_MAP_H_

#include <cstdint>
#include <utility>
#include <vector>

namespace tf_lsh {

class IdMap {
 public:
  // Room for `capacity` distinct ids at a load factor of at most 1/2; the map doubles when
  // more arrive (size it for the usual case: fresh memory costs page faults).
  explicit IdMap(int64_t capacity) { Resize(capacity); }

  // Returns the value of `id`, inserting `value` first if `id` is absent.
  int32_t FindOrInsert(int32_t id, int32_t value) {
    uint64_t slot = Hash(id) & mask_;
    while (keys_[slot] != kEmpty) {
      if (keys_[slot] == id) return values_[slot];
      slot = (slot + 1) & mask_;
    }
    if (2 * (used_.size() + 1) > keys_.size()) {
      Grow();
      return FindOrInsert(id, value);
    }
    keys_[slot] = id;
    values_[slot] = value;
    used_.push_back(slot);
    return value;
  }

  // Returns a pointer to the value of `id`, or nullptr.
  int32_t* Find(int32_t id) { return const_cast<int32_t*>(std::as_const(*this).Find(id)); }
  const int32_t* Find(int32_t id) const {
    uint64_t slot = Hash(id) & mask_;
    while (keys_[slot] != kEmpty) {
      if (keys_[slot] == id) return &values_[slot];
      slot = (slot + 1) & mask_;
    }
    return nullptr;
  }

  // Empties the map in time proportional to the number of ids inserted since the last Clear.
  void Clear() {
    for (uint64_t slot : used_) keys_[slot] = kEmpty;
    used_.clear();
  }

  int64_t size() const { return static_cast<int64_t>(used_.size()); }

 private:
  static constexpr int32_t kEmpty = -1;

  void Resize(int64_t capacity) {
    int64_t size = 16;
    while (size < 2 * capacity) size *= 2;
    mask_ = size - 1;
    keys_.assign(size, kEmpty);
    values_.resize(size);
  }

  // Doubles the table, keeping the insertion order of `used_`.
  void Grow() {
    std::vector<std::pair<int32_t, int32_t>> entries;
    entries.reserve(used_.size());
    for (uint64_t slot : used_) entries.emplace_back(keys_[slot], values_[slot]);
    Resize(static_cast<int64_t>(keys_.size()));
    used_.clear();
    for (const auto& [id, value] : entries) FindOrInsert(id, value);
  }
  static uint64_t Hash(int32_t id) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(id)) * 0x9E3779B97F4A7C15ull) >> 20;
  }

  uint64_t mask_;
  std::vector<int32_t> keys_;
  std::vector<int32_t> values_;
  std::vector<uint64_t> used_;
};

}  // namespace tf_lsh

#endif  // TF_LSH_OPS_CC_CORE_ID_MAP_H_
