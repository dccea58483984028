// The Python side of StepCallback (runtime/callbacks.h): on_step(block_index, step, block_start,
// tokens, masked) with one list of L ids / L bools per prompt of the call.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "callbacks.h"

namespace sdar::bindings {

// `fn` must outlive the call (it is the argument of the bound generate()); it is never copied
// without the GIL. None gives an empty callback, so the core never copies step states back.
inline StepCallback python_step_callback(const pybind11::object& fn) {
  namespace py = pybind11;
  if (fn.is_none()) return {};
  const py::object* callable = &fn;
  return [callable](const StepView& view) -> bool {
    py::gil_scoped_acquire gil;
    const auto L = static_cast<std::size_t>(view.block_length);
    py::list tokens, masked;
    for (std::size_t r = 0; r < static_cast<std::size_t>(view.rows); ++r) {
      py::list row_tokens, row_masked;
      for (std::size_t j = r * L; j < (r + 1) * L; ++j) {
        row_tokens.append((*view.tokens)[j]);
        row_masked.append((*view.masked)[j] != 0);
      }
      tokens.append(row_tokens);
      masked.append(row_masked);
    }
    const py::object keep = (*callable)(view.block_index, view.step, view.block_start, tokens, masked);
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    return keep.is_none() || keep.cast<bool>();
  };
}

}  // namespace sdar::bindings
