#pragma once
// The library is built with hidden visibility: only what carries HBWATCH_API is exported.

#if defined(HBWATCH_STATIC)
#define HBWATCH_API
#else
#define HBWATCH_API __attribute__((visibility("default")))
#endif
