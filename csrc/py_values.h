// Python values -> the core's typed parameters, for the bindings. Only the representation is
// checked here (an integer, a number, a string), with the parameter's name in the message; the
// ranges are checked by the core when a call starts (Generator::generate), so every rule has one
// place and one message. Integers beyond the core's int are clamped, so the core reports them with
// its own range message.
#pragma once

#include <pybind11/pybind11.h>

#include <climits>
#include <cstdint>
#include <optional>
#include <string>

#include "errors.h"

namespace sdar::py_values {

namespace py = pybind11;

inline std::string describe(const py::handle& value) { return py::repr(value).cast<std::string>(); }

inline bool is_integer(const py::handle& value) {
  return PyIndex_Check(value.ptr()) != 0 && !PyBool_Check(value.ptr());  // True is not a token count
}

// An integer parameter (Python int or numpy integer).
inline int to_int(const py::handle& value, const char* name) {
  if (!is_integer(value)) throw InvalidArgument(std::string(name) + " must be an integer, got " + describe(value));
  int overflow = 0;
  const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(value.ptr()));
  if (!index) throw py::error_already_set();
  const long long v = PyLong_AsLongLongAndOverflow(index.ptr(), &overflow);
  if (overflow > 0 || v > INT_MAX) return INT_MAX;
  if (overflow < 0 || v < INT_MIN) return INT_MIN;
  return static_cast<int>(v);
}

// None -> unset (the core's default), else an integer.
inline std::optional<int> to_optional_int(const py::handle& value, const char* name) {
  if (value.is_none()) return std::nullopt;
  return to_int(value, name);
}

// A real number (int, float, numpy scalars; not bool, str or complex).
inline double to_double(const py::handle& value, const char* name) {
  if (PyBool_Check(value.ptr()) || PyNumber_Check(value.ptr()) == 0) {
    throw InvalidArgument(std::string(name) + " must be a number, got " + describe(value));
  }
  const double v = PyFloat_AsDouble(value.ptr());
  if (v == -1.0 && PyErr_Occurred()) {  // complex, or an int too large for a double
    PyErr_Clear();
    throw InvalidArgument(std::string(name) + " must be a real number, got " + describe(value));
  }
  return v;
}

// The Philox seed: an integer in [0, 2**64).
inline std::uint64_t to_seed(const py::handle& value) {
  if (!is_integer(value)) throw InvalidArgument("seed must be an integer in [0, 2**64), got " + describe(value));
  const py::object index = py::reinterpret_steal<py::object>(PyNumber_Index(value.ptr()));
  if (!index) throw py::error_already_set();
  const unsigned long long v = PyLong_AsUnsignedLongLong(index.ptr());
  if (PyErr_Occurred()) {  // negative or >= 2**64
    PyErr_Clear();
    throw InvalidArgument("seed must be an integer in [0, 2**64), got " + describe(value));
  }
  return static_cast<std::uint64_t>(v);
}

// A flag, by Python truthiness.
inline bool to_bool(const py::handle& value) {
  const int truth = PyObject_IsTrue(value.ptr());
  if (truth < 0) throw py::error_already_set();
  return truth == 1;
}

inline std::string to_string(const py::handle& value, const char* name) {
  if (!PyUnicode_Check(value.ptr())) throw InvalidArgument(std::string(name) + " must be a string, got " + describe(value));
  return value.cast<std::string>();
}

}  // namespace sdar::py_values
